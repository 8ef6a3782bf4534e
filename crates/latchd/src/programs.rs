//! The RPC programs latchd registers.
pub const NLM_PROGRAM: u32 = 100_021;
pub const NSM_PROGRAM: u32 = 100_024;
/// The NLM versions we register. Version 2 is accepted on the wire as 1
/// (it adds nothing that matters) but not advertised.
pub const NLM_VERSIONS: [u32; 3] = [1, 3, 4];
pub const NSM_VERSIONS: [u32; 1] = [1];
