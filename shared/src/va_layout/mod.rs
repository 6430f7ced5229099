//! The hyp VA layout (`kern_hyp_va`) and the callbacks that patch layout constants.
