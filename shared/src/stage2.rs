//! Stage-2 translation parameters: the values the hyp loads into VTCR_EL2 and VTTBR_EL2
//! for a guest (or for the host in protected mode), the table geometry behind them, and
//! the attribute bits of stage-2 block and page descriptors.
//!
//! All of it assumes the 4 KiB translation granule, like the rest of the project.
//!
//! # VTCR_EL2 (as Linux's `kvm_get_vtcr` builds it, LINUX-FACTS §7.1)
//!
//! ```text
//! bit 31      RES1
//! bit 21      HA     hardware Access flag update (set always: RES0 where unsupported)
//! bit 19      VS     16-bit VMIDs (when ID_AA64MMFR1_EL1.VMIDBits == 2)
//! bits 18:16  PS     output size = PARange, capped at 48 bits
//! bits 15:14  TG0    0 = 4 KiB
//! bits 13:12  SH0    3 = inner shareable
//! bits 11:10  ORGN0  1 = write-back, write-allocate
//! bits 9:8    IRGN0  1 = write-back, write-allocate
//! bits 7:6    SL0    starting level: 0 = level 2, 1 = level 1, 2 = level 0
//! bits 5:0    T0SZ   64 - IPA bits
//! ```
//!
//! The number of levels is the smallest that covers `ipa_bits` when up to 16 tables may
//! be concatenated at the starting level (4 extra bits), and never fewer than 2. Worked
//! values for QEMU's CPU models: cortex-a53 (PARange 40 bits, 8-bit VMIDs) 0x8022_3558;
//! cortex-a57/a72 (44 bits) 0x8024_3594; `max` (52 bits capped to 48, 16-bit VMIDs)
//! 0x802D_3590. The tests derive each of them field by field.

use core::fmt;

/// Largest IPA/PA size handled: 48 bits (52-bit output needs FEAT_LPA2 descriptors).
pub const MAX_PA_BITS: u8 = 48;
/// Smallest IPA size a VM may ask for (Linux's KVM refuses smaller ones too).
pub const MIN_IPA_BITS: u8 = 32;
/// The IPA size a guest gets when it asks for nothing: enough for QEMU virt's map
/// (RAM at 1 GiB, devices below) and supported by every CPU model (a53 has 40).
pub const DEFAULT_GUEST_IPA_BITS: u8 = 40;

/// VTCR_EL2 bit 31, RES1.
pub const VTCR_RES1: u64 = 1 << 31;
/// VTCR_EL2.HA: hardware Access flag updates.
pub const VTCR_HA: u64 = 1 << 21;
/// VTCR_EL2.VS: 16-bit VMIDs.
pub const VTCR_VS: u64 = 1 << 19;
/// Shift of VTCR_EL2.PS.
pub const VTCR_PS_SHIFT: u32 = 16;
/// VTCR_EL2.SH0 = inner shareable, ORGN0 = IRGN0 = write-back write-allocate, TG0 = 4K.
pub const VTCR_WALK_ATTRS: u64 = (3 << 12) | (1 << 10) | (1 << 8);
/// Shift of VTCR_EL2.SL0.
pub const VTCR_SL0_SHIFT: u32 = 6;

/// Why stage-2 parameters cannot be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage2Error {
    /// The requested IPA size is outside `MIN_IPA_BITS..=limit`.
    IpaBits {
        /// What was asked for.
        requested: u8,
        /// The largest the CPU supports (its PA size, capped at 48).
        limit: u8,
    },
    /// The VMID does not fit the CPU's VMID width.
    Vmid {
        /// The VMID.
        vmid: u16,
        /// The width in bits.
        bits: u8,
    },
    /// The root table's physical address is misaligned or beyond 48 bits.
    RootAddress {
        /// The address.
        pa: u64,
        /// The alignment it needs.
        align: u64,
    },
    /// An executable mapping of device memory was requested.
    ExecutableDevice,
}

impl fmt::Display for Stage2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::IpaBits { requested, limit } => write!(
                f,
                "IPA size of {requested} bits is not supported (must be {MIN_IPA_BITS}..={limit})"
            ),
            Self::Vmid { vmid, bits } => {
                write!(f, "VMID {vmid} does not fit in {bits} bits")
            }
            Self::RootAddress { pa, align } => write!(
                f,
                "stage-2 root table at {pa:#x} is not {align:#x}-aligned below 2^48"
            ),
            Self::ExecutableDevice => write!(f, "device memory cannot be mapped executable"),
        }
    }
}

/// The PA size in bits that an ID_AA64MMFR0_EL1.PARange value means, capped at
/// [`MAX_PA_BITS`]. Values the architecture may add later only grow, so they cap too.
pub const fn parange_bits(parange: u8) -> u8 {
    match parange & 0xf {
        0 => 32,
        1 => 36,
        2 => 40,
        3 => 42,
        4 => 44,
        _ => MAX_PA_BITS,
    }
}

/// The PS/PARange encoding of a PA size of exactly `bits` (32, 36, 40, 42, 44, 48).
pub const fn pa_bits_to_ps(bits: u8) -> Option<u8> {
    match bits {
        32 => Some(0),
        36 => Some(1),
        40 => Some(2),
        42 => Some(3),
        44 => Some(4),
        48 => Some(5),
        _ => None,
    }
}

/// VMID width from ID_AA64MMFR1_EL1.VMIDBits (bits [7:4]): 2 ⇒ 16 bits, else 8.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmidBits {
    /// 8-bit VMIDs.
    Eight,
    /// 16-bit VMIDs (VTCR_EL2.VS must be set to use them).
    Sixteen,
}

impl VmidBits {
    /// From the raw ID_AA64MMFR1_EL1 value.
    pub const fn from_mmfr1(mmfr1: u64) -> Self {
        if (mmfr1 >> 4) & 0xf == 2 {
            Self::Sixteen
        } else {
            Self::Eight
        }
    }

    /// The width in bits.
    pub const fn bits(self) -> u8 {
        match self {
            Self::Eight => 8,
            Self::Sixteen => 16,
        }
    }
}

/// The IPA size for a VM: `requested` (or [`DEFAULT_GUEST_IPA_BITS`]) checked against
/// the CPU's PA size (from ID_AA64MMFR0_EL1.PARange). A default larger than the CPU
/// supports shrinks to the CPU's size; an explicit request never silently shrinks.
pub fn select_ipa_bits(mmfr0: u64, requested: Option<u8>) -> Result<u8, Stage2Error> {
    let limit = parange_bits((mmfr0 & 0xf) as u8);
    match requested {
        None => Ok(DEFAULT_GUEST_IPA_BITS.min(limit)),
        Some(r) if (MIN_IPA_BITS..=limit).contains(&r) => Ok(r),
        Some(requested) => Err(Stage2Error::IpaBits { requested, limit }),
    }
}

/// The shape of a stage-2 table tree for one IPA size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage2Geometry {
    /// IPA size in bits.
    pub ipa_bits: u8,
    /// Lookup levels (2..=4).
    pub levels: u8,
    /// The starting level (4 - levels): 0, 1 or 2.
    pub start_level: u8,
    /// Descriptors in the (possibly concatenated) root table.
    pub root_entries: u64,
    /// 4 KiB pages the root occupies (1..=16; more than 1 means concatenated tables).
    pub root_pages: u64,
}

impl Stage2Geometry {
    /// The geometry for `ipa_bits` in `MIN_IPA_BITS..=MAX_PA_BITS`.
    pub fn new(ipa_bits: u8) -> Result<Self, Stage2Error> {
        if !(MIN_IPA_BITS..=MAX_PA_BITS).contains(&ipa_bits) {
            return Err(Stage2Error::IpaBits {
                requested: ipa_bits,
                limit: MAX_PA_BITS,
            });
        }
        // Each level resolves 9 bits above the 12-bit page offset; allowing 16
        // concatenated root tables lets the root resolve 4 bits more.
        let walk_bits = u32::from(ipa_bits) - 12;
        let levels = (walk_bits - 4).div_ceil(9).max(2);
        let start_level = 4 - levels;
        let root_bits = walk_bits - 9 * (levels - 1);
        let root_entries = 1u64 << root_bits;
        Ok(Self {
            ipa_bits,
            levels: levels as u8,
            start_level: start_level as u8,
            root_entries,
            root_pages: root_entries.div_ceil(512),
        })
    }

    /// Bytes of the root table(s).
    pub const fn root_bytes(&self) -> u64 {
        self.root_entries.saturating_mul(8)
    }

    /// The alignment the root's physical address needs: its size, at least a page
    /// (tables are page allocations; concatenated tables must be aligned to their total).
    pub const fn root_align(&self) -> u64 {
        let b = self.root_bytes();
        if b < 4096 {
            4096
        } else {
            b
        }
    }

    /// The VTCR_EL2.SL0 encoding of the starting level.
    pub const fn sl0(&self) -> u64 {
        // Saturating: the fields are public, and a hand-made value must not panic.
        2u8.saturating_sub(self.start_level) as u64
    }
}

/// Inputs to [`vtcr_el2`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VtcrParams {
    /// ID_AA64MMFR0_EL1.PARange (bits [3:0]), for PS.
    pub parange: u8,
    /// The IPA size (T0SZ and the levels).
    pub ipa_bits: u8,
    /// VMID width (VS).
    pub vmid_bits: VmidBits,
}

/// The VTCR_EL2 value for `params`; the IPA must not exceed the PA size.
pub fn vtcr_el2(params: VtcrParams) -> Result<u64, Stage2Error> {
    let pa_bits = parange_bits(params.parange);
    if params.ipa_bits > pa_bits {
        return Err(Stage2Error::IpaBits {
            requested: params.ipa_bits,
            limit: pa_bits,
        });
    }
    let geo = Stage2Geometry::new(params.ipa_bits)?;
    let ps = match pa_bits_to_ps(pa_bits) {
        Some(ps) => ps as u64,
        None => 5, // unreachable: parange_bits only yields encodable sizes
    };
    let mut vtcr = VTCR_RES1
        | VTCR_HA
        | (ps << VTCR_PS_SHIFT)
        | VTCR_WALK_ATTRS
        | (geo.sl0() << VTCR_SL0_SHIFT)
        | (64 - u64::from(params.ipa_bits));
    if params.vmid_bits == VmidBits::Sixteen {
        vtcr |= VTCR_VS;
    }
    Ok(vtcr)
}

/// VTCR_EL2 straight from the ID registers, for an IPA of `ipa_bits`.
pub fn vtcr_from_id_regs(mmfr0: u64, mmfr1: u64, ipa_bits: u8) -> Result<u64, Stage2Error> {
    vtcr_el2(VtcrParams {
        parange: (mmfr0 & 0xf) as u8,
        ipa_bits,
        vmid_bits: VmidBits::from_mmfr1(mmfr1),
    })
}

/// VTTBR_EL2.CnP: the table may be shared with other PEs (FEAT_TTCNP).
pub const VTTBR_CNP: u64 = 1;
/// Shift of VTTBR_EL2.VMID (bits [63:48]; [55:48] with 8-bit VMIDs).
pub const VTTBR_VMID_SHIFT: u32 = 48;

/// The VTTBR_EL2 value: `vmid` in [63:48], the root table address in BADDR [47:1],
/// CnP in bit 0 if `cnp` (only when the CPU has FEAT_TTCNP, i.e. the HAS_CNP cap).
pub fn vttbr_el2(
    vmid: u16,
    vmid_bits: VmidBits,
    root_pa: u64,
    geometry: &Stage2Geometry,
    cnp: bool,
) -> Result<u64, Stage2Error> {
    if vmid_bits == VmidBits::Eight && vmid > 0xff {
        return Err(Stage2Error::Vmid {
            vmid,
            bits: vmid_bits.bits(),
        });
    }
    let align = geometry.root_align();
    if !root_pa.is_multiple_of(align) || root_pa >> MAX_PA_BITS != 0 {
        return Err(Stage2Error::RootAddress { pa: root_pa, align });
    }
    Ok((u64::from(vmid) << VTTBR_VMID_SHIFT) | root_pa | if cnp { VTTBR_CNP } else { 0 })
}

/// Stage-2 access permission (S2AP, descriptor bits [7:6]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S2Access {
    /// No access.
    None = 0b00,
    /// Read-only.
    ReadOnly = 0b01,
    /// Write-only.
    WriteOnly = 0b10,
    /// Read/write.
    ReadWrite = 0b11,
}

/// The memory type of a stage-2 mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum S2MemType {
    /// Normal write-back cacheable (RAM).
    Normal,
    /// Normal non-cacheable.
    NormalNonCacheable,
    /// Device-nGnRE (MMIO passed through).
    Device,
}

/// Descriptor bit: valid.
pub const S2_VALID: u64 = 1 << 0;
/// Descriptor bit 1: table (levels 0-2) / page (level 3) rather than block.
pub const S2_TABLE_OR_PAGE: u64 = 1 << 1;
/// Shift of MemAttr (bits [5:2]).
pub const S2_MEMATTR_SHIFT: u32 = 2;
/// Shift of S2AP (bits [7:6]).
pub const S2_S2AP_SHIFT: u32 = 6;
/// SH = inner shareable (bits [9:8] = 0b11).
pub const S2_SH_INNER: u64 = 3 << 8;
/// Access flag (bit 10): set on creation so no access-flag fault is taken.
pub const S2_AF: u64 = 1 << 10;
/// XN[1] (bit 54): execute-never at EL1 and EL0 (without FEAT_XNX bit 53 stays 0).
pub const S2_XN: u64 = 1 << 54;

/// The MemAttr field value for a memory type, without FWB (`HCR_EL2.FWB = 0`: the
/// stage-2 type combines with stage 1, the stricter wins) or with it (FEAT_S2FWB,
/// `HCR_EL2.FWB = 1`: stage 2 forces the type).
pub const fn s2_memattr(mem: S2MemType, fwb: bool) -> u64 {
    match (mem, fwb) {
        // Outer and inner write-back.
        (S2MemType::Normal, false) => 0b1111,
        // Outer and inner non-cacheable.
        (S2MemType::NormalNonCacheable, false) => 0b0101,
        // Device (MemAttr[3:2] = 0), nGnRE.
        (S2MemType::Device, false) => 0b0001,
        // FWB: 0b110 forces Normal write-back.
        (S2MemType::Normal, true) => 0b0110,
        // FWB: 0b101 Normal non-cacheable.
        (S2MemType::NormalNonCacheable, true) => 0b0101,
        // FWB: MemAttr[2] = 0 is Device with MemAttr[1:0] the type: nGnRE.
        (S2MemType::Device, true) => 0b0001,
    }
}

/// The attribute bits of a stage-2 block or page descriptor (everything but the valid
/// and type bits and the output address): AF, shareability, S2AP, MemAttr and XN.
/// Device memory must not be executable.
pub fn s2_attributes(
    mem: S2MemType,
    access: S2Access,
    exec: bool,
    fwb: bool,
) -> Result<u64, Stage2Error> {
    if exec && mem == S2MemType::Device {
        return Err(Stage2Error::ExecutableDevice);
    }
    // Shareability is ignored for Device memory; inner shareable is right for the rest.
    let sh = if mem == S2MemType::Device {
        0
    } else {
        S2_SH_INNER
    };
    Ok(S2_AF
        | sh
        | ((access as u64) << S2_S2AP_SHIFT)
        | (s2_memattr(mem, fwb) << S2_MEMATTR_SHIFT)
        | if exec { 0 } else { S2_XN })
}

/// The S2AP field of a descriptor.
pub const fn s2_access_of(descriptor: u64) -> S2Access {
    match (descriptor >> S2_S2AP_SHIFT) & 3 {
        0 => S2Access::None,
        1 => S2Access::ReadOnly,
        2 => S2Access::WriteOnly,
        _ => S2Access::ReadWrite,
    }
}

/// Where a stage-2 walker finds its table pages: the hyp implements it over its pool
/// (hyp VAs of host pages), the tests over a vector.
pub trait TableMemory {
    /// The 512 descriptors of the table page at physical address `pa`, or `None` if
    /// `pa` is not a table page this memory hands out (a corrupted descriptor).
    fn table(&mut self, pa: u64) -> Option<&mut [u64; 512]>;
    /// A zeroed page for a new table: its PA, or `None` when the pool is used up.
    fn alloc(&mut self) -> Option<u64>;
    /// Pages [`TableMemory::alloc`] can still hand out.
    fn free_pages(&self) -> u64;
}

/// Why a stage-2 mapping was refused. Nothing was written when this is returned by
/// [`map_range`]'s checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// Something is already mapped (or annotated) in the range.
    Overlap {
        /// The first IPA that is.
        ipa: u64,
    },
    /// The pool has fewer free pages than the new tables need.
    NoMemory {
        /// Pages needed.
        needed: u64,
        /// Pages free.
        free: u64,
    },
    /// A table descriptor points outside the table memory.
    CorruptTable {
        /// The descriptor.
        descriptor: u64,
    },
    /// Addresses or size not page aligned, or the range leaves the IPA space.
    BadRange,
}

impl fmt::Display for MapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Overlap { ipa } => write!(f, "IPA {ipa:#x} is already mapped"),
            Self::NoMemory { needed, free } => {
                write!(f, "{needed} table pages needed, {free} free")
            }
            Self::CorruptTable { descriptor } => {
                write!(
                    f,
                    "table descriptor {descriptor:#x} points outside the pool"
                )
            }
            Self::BadRange => write!(f, "range not page aligned or outside the IPA space"),
        }
    }
}

/// Bits [47:12] of a descriptor: the output (or next-table) address.
pub const S2_OA_MASK: u64 = 0x0000_ffff_ffff_f000;
const PAGE_SHIFT: u32 = 12;
const SIZE_2M: u64 = 2 << 20;

/// The address shift of one entry at `level` (level 3: 12, level 2: 21, …).
const fn level_shift(level: u8) -> u32 {
    PAGE_SHIFT + 9 * (3 - level as u32)
}

/// One leaf the mapping is made of: a 2 MiB block at level 2 where IPA and PA are both
/// aligned and enough is left, else a 4 KiB page at level 3.
fn leaf_at(ipa: u64, pa: u64, left: u64) -> (u8, u64) {
    if ipa.is_multiple_of(SIZE_2M) && pa.is_multiple_of(SIZE_2M) && left >= SIZE_2M {
        (2, SIZE_2M)
    } else {
        (3, 1 << PAGE_SHIFT)
    }
}

/// The table page and index of `ipa`'s entry in the table at `table_pa` of `level`; the
/// root may be several concatenated pages.
fn entry_slot(geo: &Stage2Geometry, table_pa: u64, level: u8, ipa: u64) -> (u64, usize) {
    let idx = if level == geo.start_level {
        (ipa >> level_shift(level)) & (geo.root_entries - 1)
    } else {
        (ipa >> level_shift(level)) & 511
    };
    (table_pa + (idx / 512) * 4096, (idx % 512) as usize)
}

/// Reads the descriptor for `ipa` at `level` in the table at `table_pa`.
fn read_entry<M: TableMemory>(
    mem: &mut M,
    geo: &Stage2Geometry,
    table_pa: u64,
    level: u8,
    ipa: u64,
) -> Result<u64, MapError> {
    let (page, i) = entry_slot(geo, table_pa, level, ipa);
    mem.table(page).map(|t| t[i]).ok_or(MapError::CorruptTable {
        descriptor: table_pa,
    })
}

fn is_table(desc: u64, level: u8) -> bool {
    level < 3 && desc & 3 == 3
}

/// Counts the table pages mapping `[ipa, ipa + size)` to `pa` would add, refusing any
/// overlap with what is mapped already. Writes nothing.
pub fn plan_map<M: TableMemory>(
    mem: &mut M,
    geo: &Stage2Geometry,
    root_pa: u64,
    ipa: u64,
    pa: u64,
    size: u64,
) -> Result<u64, MapError> {
    check_range(geo, ipa, pa, size)?;
    let mut needed = 0;
    // The entry (by IPA >> shift) whose new table was counted last, per level: chunks
    // come in IPA order, so one check dedupes tables shared by consecutive chunks.
    let mut counted = [u64::MAX; 4];
    let mut off = 0;
    while off < size {
        let (leaf_level, step) = leaf_at(ipa + off, pa + off, size - off);
        let at = ipa + off;
        let mut table = Some(root_pa);
        let mut level = geo.start_level;
        while level < leaf_level {
            let region = at >> level_shift(level);
            if let Some(t) = table {
                let d = read_entry(mem, geo, t, level, at)?;
                if is_table(d, level) {
                    table = Some(d & S2_OA_MASK);
                } else if d != 0 {
                    return Err(MapError::Overlap { ipa: at });
                } else {
                    table = None;
                }
            }
            if table.is_none() && counted[level as usize] != region {
                counted[level as usize] = region;
                needed += 1;
            }
            level += 1;
        }
        if let Some(t) = table {
            if read_entry(mem, geo, t, leaf_level, at)? != 0 {
                return Err(MapError::Overlap { ipa: at });
            }
        }
        off += step;
    }
    Ok(needed)
}

fn check_range(geo: &Stage2Geometry, ipa: u64, pa: u64, size: u64) -> Result<(), MapError> {
    let page = 1u64 << PAGE_SHIFT;
    let aligned = ipa.is_multiple_of(page) && pa.is_multiple_of(page) && size.is_multiple_of(page);
    let ipa_end = ipa.checked_add(size).ok_or(MapError::BadRange)?;
    let pa_end = pa.checked_add(size).ok_or(MapError::BadRange)?;
    if !aligned || size == 0 || ipa_end > 1 << geo.ipa_bits || pa_end > 1 << MAX_PA_BITS {
        return Err(MapError::BadRange);
    }
    Ok(())
}

/// Maps `[ipa, ipa + size)` to `[pa, pa + size)` with the block/page attribute bits
/// `attrs` (from [`s2_attributes`]). Checks everything first ([`plan_map`]: range,
/// overlap, pool space) and writes only when the whole mapping can be made, so an error
/// leaves the tables untouched. The caller makes the writes visible to the table walker
/// (`DSB ISHST`) before the guest may use them; no TLB maintenance is needed because only
/// invalid entries are replaced.
pub fn map_range<M: TableMemory>(
    mem: &mut M,
    geo: &Stage2Geometry,
    root_pa: u64,
    ipa: u64,
    pa: u64,
    size: u64,
    attrs: u64,
) -> Result<(), MapError> {
    let needed = plan_map(mem, geo, root_pa, ipa, pa, size)?;
    let free = mem.free_pages();
    if needed > free {
        return Err(MapError::NoMemory { needed, free });
    }
    let attrs = attrs & !(S2_OA_MASK | 3);
    let mut off = 0;
    while off < size {
        let (leaf_level, step) = leaf_at(ipa + off, pa + off, size - off);
        let at = ipa + off;
        let mut table = root_pa;
        let mut level = geo.start_level;
        while level < leaf_level {
            let (page, i) = entry_slot(geo, table, level, at);
            let d = mem
                .table(page)
                .ok_or(MapError::CorruptTable { descriptor: table })?[i];
            table = if is_table(d, level) {
                d & S2_OA_MASK
            } else {
                let new = mem.alloc().ok_or(MapError::NoMemory { needed, free })?;
                let t = mem
                    .table(page)
                    .ok_or(MapError::CorruptTable { descriptor: table })?;
                t[i] = new | S2_TABLE_OR_PAGE | S2_VALID;
                new
            };
            level += 1;
        }
        let (page, i) = entry_slot(geo, table, leaf_level, at);
        let kind = if leaf_level == 3 { S2_TABLE_OR_PAGE } else { 0 };
        let t = mem
            .table(page)
            .ok_or(MapError::CorruptTable { descriptor: table })?;
        t[i] = (pa + off) | attrs | kind | S2_VALID;
        off += step;
    }
    Ok(())
}

/// The translation of `ipa`: the output address and the level of the leaf, or `None`
/// if nothing maps it.
pub fn translate<M: TableMemory>(
    mem: &mut M,
    geo: &Stage2Geometry,
    root_pa: u64,
    ipa: u64,
) -> Option<(u64, u8)> {
    let mut table = root_pa;
    let mut level = geo.start_level;
    loop {
        let d = read_entry(mem, geo, table, level, ipa).ok()?;
        if d & 1 == 0 {
            return None;
        }
        if is_table(d, level) {
            table = d & S2_OA_MASK;
            level += 1;
            continue;
        }
        let mask = (1u64 << level_shift(level)) - 1;
        return Some(((d & S2_OA_MASK & !mask) | (ipa & mask), level));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// VTCR assembled by hand from the field table in the module docs.
    fn vtcr_by_fields(ps: u64, sl0: u64, t0sz: u64, vs: bool) -> u64 {
        (1 << 31)
            | (1 << 21)
            | (u64::from(vs) << 19)
            | (ps << 16)
            | (3 << 12)
            | (1 << 10)
            | (1 << 8)
            | (sl0 << 6)
            | t0sz
    }

    #[test]
    fn qemu_cortex_a53() {
        // MMFR0 0x1122: PARange 2 = 40 bits; MMFR1 0: 8-bit VMIDs.
        // 40-bit IPA: 28 walk bits, 3 levels from level 1 (SL0 = 1), two concatenated
        // level-1 tables (1024 entries).
        let v = vtcr_from_id_regs(0x1122, 0, 40).unwrap();
        assert_eq!(v, vtcr_by_fields(2, 1, 24, false));
        assert_eq!(v, 0x8022_3558);
        let g = Stage2Geometry::new(40).unwrap();
        assert_eq!(
            (g.levels, g.start_level, g.root_entries, g.root_pages),
            (3, 1, 1024, 2)
        );
    }

    #[test]
    fn qemu_cortex_a57_a72() {
        // MMFR0 0x1124: 44 bits. 32 walk bits need 4 levels from level 0 (SL0 = 2);
        // level 0 resolves IPA bits [43:39]: 32 entries.
        let v = vtcr_from_id_regs(0x1124, 0, 44).unwrap();
        assert_eq!(v, vtcr_by_fields(4, 2, 20, false));
        assert_eq!(v, 0x8024_3594);
        let g = Stage2Geometry::new(44).unwrap();
        assert_eq!(
            (g.levels, g.start_level, g.root_entries, g.root_pages),
            (4, 0, 32, 1)
        );
    }

    #[test]
    fn qemu_max() {
        // PARange 6 (52 bits) caps to 48 (PS = 5); MMFR1.VMIDBits = 2: 16-bit VMIDs.
        let mmfr0 = 0x6;
        let mmfr1 = 2 << 4;
        let ipa = parange_bits(6);
        assert_eq!(ipa, 48);
        let v = vtcr_from_id_regs(mmfr0, mmfr1, ipa).unwrap();
        assert_eq!(v, vtcr_by_fields(5, 2, 16, true));
        assert_eq!(v, 0x802D_3590);
    }

    #[test]
    fn geometry_for_every_size() {
        // (ipa, levels, start, root entries)
        for (ipa, levels, start, entries) in [
            (32, 2, 2, 2048), // 4 concatenated level-2 tables
            (36, 3, 1, 64),
            (40, 3, 1, 1024),
            (42, 3, 1, 4096), // 8 concatenated level-1 tables
            (44, 4, 0, 32),
            (48, 4, 0, 512),
        ] {
            let g = Stage2Geometry::new(ipa).unwrap();
            assert_eq!(
                (g.levels, g.start_level, g.root_entries),
                (levels, start, entries),
                "{ipa}"
            );
            assert!(g.root_pages <= 16);
            // The tree covers exactly the IPA space.
            let covered = 12 + 9 * (u32::from(g.levels) - 1) + g.root_entries.trailing_zeros();
            assert_eq!(covered, u32::from(ipa));
        }
        assert!(Stage2Geometry::new(31).is_err());
        assert!(Stage2Geometry::new(49).is_err());
    }

    #[test]
    fn ipa_selection() {
        assert_eq!(select_ipa_bits(0x1122, None), Ok(40));
        assert_eq!(
            select_ipa_bits(0x1121, None),
            Ok(36),
            "default shrinks to the CPU"
        );
        assert_eq!(select_ipa_bits(0x6, Some(48)), Ok(48));
        assert_eq!(
            select_ipa_bits(0x1122, Some(44)),
            Err(Stage2Error::IpaBits {
                requested: 44,
                limit: 40
            })
        );
        assert!(select_ipa_bits(0x6, Some(20)).is_err());
        // An IPA larger than the PA size is refused by vtcr_el2 too.
        assert!(vtcr_from_id_regs(0x1122, 0, 44).is_err());
        let msg = std::format!(
            "{}",
            Stage2Error::IpaBits {
                requested: 44,
                limit: 40
            }
        );
        assert!(msg.contains("44") && msg.contains("40"), "{msg}");
    }

    #[test]
    fn vttbr() {
        let g40 = Stage2Geometry::new(40).unwrap(); // 8 KiB root
        assert_eq!(
            vttbr_el2(5, VmidBits::Eight, 0x4_0000_0000, &g40, false),
            Ok((5 << 48) | 0x4_0000_0000)
        );
        assert_eq!(
            vttbr_el2(0x1234, VmidBits::Sixteen, 0x8000_0000, &g40, true),
            Ok((0x1234 << 48) | 0x8000_0000 | 1)
        );
        assert_eq!(
            vttbr_el2(0x100, VmidBits::Eight, 0, &g40, false),
            Err(Stage2Error::Vmid {
                vmid: 0x100,
                bits: 8
            })
        );
        // Concatenated tables need alignment to their total size.
        assert_eq!(
            vttbr_el2(1, VmidBits::Eight, 0x1000, &g40, false),
            Err(Stage2Error::RootAddress {
                pa: 0x1000,
                align: 0x2000
            })
        );
        let g44 = Stage2Geometry::new(44).unwrap();
        assert!(vttbr_el2(1, VmidBits::Eight, 0x1000, &g44, false).is_ok());
        assert!(vttbr_el2(1, VmidBits::Eight, 1 << 48, &g44, false).is_err());
    }

    #[test]
    fn descriptor_attributes() {
        // RAM without FWB: AF | SH inner | S2AP RW | MemAttr 0xf, executable.
        let ram = s2_attributes(S2MemType::Normal, S2Access::ReadWrite, true, false).unwrap();
        assert_eq!(ram, (1 << 10) | (3 << 8) | (3 << 6) | (0xf << 2));
        assert_eq!(s2_access_of(ram), S2Access::ReadWrite);
        // With FWB the forced write-back encoding is 0b0110.
        let ram_fwb = s2_attributes(S2MemType::Normal, S2Access::ReadWrite, true, true).unwrap();
        assert_eq!((ram_fwb >> 2) & 0xf, 0b0110);
        // MMIO: Device-nGnRE (1 with or without FWB), XN, read-only here.
        let dev = s2_attributes(S2MemType::Device, S2Access::ReadOnly, false, false).unwrap();
        assert_eq!(dev, (1 << 10) | (1 << 6) | (1 << 2) | (1 << 54));
        assert_eq!(s2_access_of(dev), S2Access::ReadOnly);
        assert_eq!(
            s2_attributes(S2MemType::Device, S2Access::ReadWrite, true, true),
            Err(Stage2Error::ExecutableDevice)
        );
        assert_eq!(s2_memattr(S2MemType::NormalNonCacheable, false), 0b0101);
        assert_eq!(s2_memattr(S2MemType::NormalNonCacheable, true), 0b0101);
        // No-access mapping keeps S2AP 0.
        let none = s2_attributes(S2MemType::Normal, S2Access::None, false, false).unwrap();
        assert_eq!(s2_access_of(none), S2Access::None);
        assert_ne!(none & S2_XN, 0);
        assert_eq!(s2_access_of(2 << 6), S2Access::WriteOnly);
    }

    /// Table memory for the tests: `pages` zeroed pages at PA `base`.
    struct VecMem {
        base: u64,
        pages: Vec<[u64; 512]>,
        used: usize,
    }

    impl VecMem {
        fn new(base: u64, pages: usize, reserved: usize) -> Self {
            Self {
                base,
                pages: vec![[0; 512]; pages],
                used: reserved,
            }
        }
    }

    impl TableMemory for VecMem {
        fn table(&mut self, pa: u64) -> Option<&mut [u64; 512]> {
            let i = pa.checked_sub(self.base)? / 4096;
            if !pa.is_multiple_of(4096) {
                return None;
            }
            self.pages.get_mut(i as usize)
        }
        fn alloc(&mut self) -> Option<u64> {
            if self.used >= self.pages.len() {
                return None;
            }
            self.used += 1;
            Some(self.base + (self.used as u64 - 1) * 4096)
        }
        fn free_pages(&self) -> u64 {
            (self.pages.len() - self.used) as u64
        }
    }

    const RAM: u64 = 0x4000_0000;

    #[test]
    fn walker_maps_blocks_and_pages_and_translates() {
        let g = Stage2Geometry::new(40).unwrap(); // root: 2 level-1 pages
        let mut m = VecMem::new(0x8000_0000, 8, 2);
        let root = 0x8000_0000;
        let attrs = s2_attributes(S2MemType::Normal, S2Access::ReadWrite, true, false).unwrap();
        // 4 MiB + 8 KiB at an aligned IPA: two blocks and two pages. Tables: one
        // level-2 (blocks) + one level-3 = 2.
        let size = (4 << 20) + 0x2000;
        assert_eq!(plan_map(&mut m, &g, root, RAM, 0x1_0000_0000, size), Ok(2));
        map_range(&mut m, &g, root, RAM, 0x1_0000_0000, size, attrs).unwrap();
        assert_eq!(m.free_pages(), 4);
        assert_eq!(
            translate(&mut m, &g, root, RAM + 0x12_3456),
            Some((0x1_0012_3456, 2))
        );
        assert_eq!(
            translate(&mut m, &g, root, RAM + (4 << 20) + 0x1008),
            Some((0x1_0040_1008, 3))
        );
        assert_eq!(translate(&mut m, &g, root, RAM + (4 << 20) + 0x2000), None);
        assert_eq!(translate(&mut m, &g, root, 0x0900_0000), None);
        // The leaf carries the attributes.
        let l2 = m.pages[0][1] & S2_OA_MASK; // root entry for IPA 1 GiB (page 0, index 1)
        let l2page = m.table(l2).unwrap();
        assert_eq!(l2page[0] & !S2_OA_MASK, attrs | S2_VALID);
    }

    #[test]
    fn walker_refuses_overlap_and_writes_nothing() {
        let g = Stage2Geometry::new(40).unwrap();
        let mut m = VecMem::new(0x8000_0000, 8, 2);
        let root = 0x8000_0000;
        map_range(&mut m, &g, root, RAM + 0x3000, 0x9000_0000, 0x1000, 0).unwrap();
        let before = m.pages.clone();
        let used = m.used;
        // A block over the page, a page on it, a range ending on it.
        for (ipa, size) in [(RAM, 2 << 20), (RAM + 0x3000, 0x1000), (RAM, 0x4000)] {
            assert_eq!(
                map_range(&mut m, &g, root, ipa, 0xa000_0000, size, 0),
                Err(MapError::Overlap {
                    ipa: if size == 2 << 20 { RAM } else { RAM + 0x3000 }
                }),
                "{ipa:#x}+{size:#x}"
            );
        }
        assert!(m.pages == before && m.used == used, "nothing written");
        // Next to it is fine.
        map_range(&mut m, &g, root, RAM + 0x4000, 0xa000_0000, 0x1000, 0).unwrap();
        // A page inside an existing block overlaps too.
        map_range(&mut m, &g, root, RAM + (2 << 20), 0xa020_0000, 2 << 20, 0).unwrap();
        assert_eq!(
            plan_map(&mut m, &g, root, RAM + (3 << 20), 0xb000_0000, 0x1000),
            Err(MapError::Overlap {
                ipa: RAM + (3 << 20)
            })
        );
    }

    #[test]
    fn walker_checks_pool_space_before_writing() {
        let g = Stage2Geometry::new(44).unwrap(); // 4 levels, 1-page root
        let mut m = VecMem::new(0x8000_0000, 3, 1);
        let root = 0x8000_0000;
        // One page needs L1, L2 and L3 tables: 3 > 2 free.
        assert_eq!(
            map_range(&mut m, &g, root, RAM, 0x9000_0000, 0x1000, 0),
            Err(MapError::NoMemory { needed: 3, free: 2 })
        );
        assert!(m.pages.iter().all(|p| p.iter().all(|d| *d == 0)));
        // A block needs only L1 and L2.
        map_range(
            &mut m,
            &g,
            root,
            RAM,
            0x8020_0000 + (2 << 20) - 0x20_0000,
            2 << 20,
            0,
        )
        .unwrap();
        assert_eq!(m.free_pages(), 0);
    }

    #[test]
    fn walker_counts_shared_tables_once_and_refuses_bad_ranges() {
        let g = Stage2Geometry::new(40).unwrap();
        let mut m = VecMem::new(0x8000_0000, 4, 2);
        let root = 0x8000_0000;
        // 1 GiB of blocks: one level-2 table. Unaligned PA: 512 level-3 tables.
        assert_eq!(plan_map(&mut m, &g, root, RAM, 0xc000_0000, 1 << 30), Ok(1));
        assert_eq!(
            plan_map(&mut m, &g, root, RAM, 0xc000_1000, 1 << 30),
            Ok(1 + 512)
        );
        // Straddling two level-1 entries: 2 level-2 tables, 2 level-3 tables.
        assert_eq!(
            plan_map(&mut m, &g, root, RAM - 0x1000, 0xc000_0000, 0x2000),
            Ok(4)
        );
        for (ipa, pa, size) in [
            (RAM + 1, 0, 0x1000),
            (RAM, 1, 0x1000),
            (RAM, 0, 0x800),
            (RAM, 0, 0),
            ((1 << 40) - 0x1000, 0, 0x2000),
            (RAM, (1 << 48) - 0x1000, 0x2000),
        ] {
            assert_eq!(
                plan_map(&mut m, &g, root, ipa, pa, size),
                Err(MapError::BadRange),
                "{ipa:#x} {pa:#x} {size:#x}"
            );
        }
        // A table descriptor pointing outside the memory is reported, not followed.
        m.pages[0][1] = 0xdead_0000 | 3;
        assert_eq!(
            plan_map(&mut m, &g, root, RAM, 0, 0x1000),
            Err(MapError::CorruptTable {
                descriptor: 0xdead_0000
            })
        );
        assert!(!MapError::BadRange.to_string().is_empty());
    }
}
