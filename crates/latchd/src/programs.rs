//! The RPC programs latchd serves. For now NLM answers NULL (the ping
//! clients and rpcinfo use); its procedures arrive with the NLM machine.

use latch_oncrpc::{CallContext, Outcome, Program};
use latch_xdr::Writer;

pub const NLM_PROGRAM: u32 = 100_021;
pub const NSM_PROGRAM: u32 = 100_024;
/// The NLM versions we register. Version 2 is accepted on the wire as 1
/// (it adds nothing that matters) but not advertised.
pub const NLM_VERSIONS: [u32; 3] = [1, 3, 4];
pub const NSM_VERSIONS: [u32; 1] = [1];

/// A program that so far serves only procedure 0.
pub struct NullOnly {
    number: u32,
    versions: (u32, u32),
}

impl NullOnly {
    pub fn nlm() -> Self {
        NullOnly {
            number: NLM_PROGRAM,
            versions: (1, 4),
        }
    }
}

impl Program for NullOnly {
    fn number(&self) -> u32 {
        self.number
    }

    fn versions(&self) -> (u32, u32) {
        self.versions
    }

    fn call(&mut self, ctx: &CallContext<'_>, _args: &[u8], _res: &mut Writer) -> Outcome {
        match ctx.proc_ {
            0 => Outcome::Reply,
            _ => Outcome::ProcUnavail,
        }
    }
}
