//! The host hypercall table (DESIGN §6): SMCCC fast calls owned by the vendor hypervisor,
//! `x0 = 0xC600_0000 | id`, arguments in x1…; on dispatch x0 = 0 (SUCCESS) and the
//! handler's result goes in x1; an unknown id, or one without a handler, gets x0 =
//! NOT_SUPPORTED (−1). Ids follow Linux v6.1's numbering (LINUX-FACTS §6.3) until the
//! shared ABI module defines them for both sides.
//!
//! The table is an array of function pointers in rodata: its slots are exactly what the
//! image's relocation list rebases.

use crate::entry::HostContext;
use crate::sysreg;

/// SMCCC function id of host call 0 (fast call, SMC64, owner 6 = vendor hypervisor).
pub const HCALL_BASE: u64 = 0xc600_0000;
/// SMCCC hint bit, ignored when decoding (as Linux does).
const SMCCC_HINT: u64 = 1 << 16;
/// SMCCC SUCCESS.
pub const SMCCC_SUCCESS: u64 = 0;
/// SMCCC NOT_SUPPORTED (−1).
pub const SMCCC_NOT_SUPPORTED: u64 = u64::MAX;

/// `__kvm_hyp_init`: served by the init vector only; refused here.
pub const HCALL_HYP_INIT: u64 = 0;
/// `__kvm_get_mdcr_el2`.
pub const HCALL_GET_MDCR_EL2: u64 = 1;
/// `__kvm_flush_vm_context`.
pub const HCALL_FLUSH_VM_CONTEXT: u64 = 13;

/// A host-call handler: reads its arguments from the context, returns the value for x1.
type Handler = fn(&HostContext) -> u64;

/// Number of ids the table covers.
const NR_HCALLS: usize = 23;

/// The dispatch table, indexed by id.
static HOST_HCALLS: [Option<Handler>; NR_HCALLS] = {
    let mut t: [Option<Handler>; NR_HCALLS] = [None; NR_HCALLS];
    // Init runs only through the init vector, with the MMU off.
    t[HCALL_HYP_INIT as usize] = None;
    t[HCALL_GET_MDCR_EL2 as usize] = Some(handle_get_mdcr_el2);
    t[HCALL_FLUSH_VM_CONTEXT as usize] = Some(handle_flush_vm_context);
    t
};

fn handle_get_mdcr_el2(_ctxt: &HostContext) -> u64 {
    sysreg::mdcr_el2()
}

fn handle_flush_vm_context(_ctxt: &HostContext) -> u64 {
    sysreg::flush_all_guest_contexts();
    0
}

/// The handler for SMCCC function id `x0`, if there is one.
fn lookup(x0: u64) -> Option<Handler> {
    let id = (x0 & !SMCCC_HINT).checked_sub(HCALL_BASE)?;
    let id = usize::try_from(id).ok()?;
    HOST_HCALLS.get(id).copied().flatten()
}

/// Decodes and runs one host hypercall; x0/x1 of `ctxt` receive the SMCCC result.
pub fn handle_host_hcall(ctxt: &mut HostContext) {
    match lookup(ctxt.regs[0]) {
        Some(handler) => {
            let ret = handler(ctxt);
            ctxt.regs[0] = SMCCC_SUCCESS;
            ctxt.regs[1] = ret;
        }
        None => ctxt.regs[0] = SMCCC_NOT_SUPPORTED,
    }
}
