//! NSM (program 100024 version 1) wire types, from X/Open XNFS.

use latch_xdr::{Decode, Encode, FixedOpaque, Reader, Result, Writer, XdrString};

pub const PROGRAM: u32 = 100_024;
pub const VERSION: u32 = 1;

pub const SM_NULL: u32 = 0;
pub const SM_STAT: u32 = 1;
pub const SM_MON: u32 = 2;
pub const SM_UNMON: u32 = 3;
pub const SM_UNMON_ALL: u32 = 4;
pub const SM_SIMU_CRASH: u32 = 5;
pub const SM_NOTIFY: u32 = 6;

/// SM_MAXSTRLEN.
pub const MAX_STR: u32 = 1024;
pub type Name = XdrString<MAX_STR>;
pub type Priv = FixedOpaque<16>;

/// The `priv` of an SM_MON whose caller also wants a notice that came
/// before the watch: one about the host received in the last
/// [`crate::monitor::LATE_NOTICE_KEEP`] is delivered right away, with
/// [`PRIV_LATE`] as its `priv`. A Latch extension; any other `priv` gets
/// the standard behaviour (such notices are dropped, as rpc.statd does).
pub const PRIV_LATE_OK: [u8; 16] = *b"latch:late-ok\0\0\0";
/// The `priv` of a notice delivered late (see [`PRIV_LATE_OK`]).
pub const PRIV_LATE: [u8; 16] = *b"latch:late-ok\0\0\x01";

pub const STAT_SUCC: u32 = 0;
pub const STAT_FAIL: u32 = 1;

macro_rules! xdr_struct {
    ($(#[$m:meta])* $name:ident { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name { $(pub $field: $ty),* }
        impl Encode for $name {
            fn encode(&self, w: &mut Writer) { $(self.$field.encode(w);)* }
        }
        impl<'a> Decode<'a> for $name {
            fn decode(r: &mut Reader<'a>) -> Result<Self> {
                Ok($name { $($field: <$ty>::decode(r)?),* })
            }
        }
    };
}

xdr_struct!(
    /// `sm_name`: SM_STAT's argument.
    SmName { mon_name: Name }
);
xdr_struct!(
    /// `sm_stat_res`.
    SmStatRes { res_stat: u32, state: u32 }
);
xdr_struct!(
    /// `sm_stat`.
    SmStat { state: u32 }
);
xdr_struct!(
    /// `my_id`: whom to call back, and how.
    MyId { my_name: Name, my_prog: u32, my_vers: u32, my_proc: u32 }
);
xdr_struct!(
    /// `mon_id`: which host, for whom.
    MonId { mon_name: Name, my_id: MyId }
);
xdr_struct!(
    /// `mon`: SM_MON's argument.
    Mon { mon_id: MonId, priv_: Priv }
);
xdr_struct!(
    /// `stat_chge`: SM_NOTIFY's argument.
    StatChge { mon_name: Name, state: u32 }
);
xdr_struct!(
    /// `status`: the argument of the callback to the registered program
    /// (NLM procedure 16 on Linux, NLM_SM version 0 procedure 1 on FreeBSD).
    Status { mon_name: Name, state: u32, priv_: Priv }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mon_has_the_xnfs_layout() {
        let m = Mon {
            mon_id: MonId {
                mon_name: Name::from_text("client").unwrap(),
                my_id: MyId {
                    my_name: Name::from_text("localhost").unwrap(),
                    my_prog: 100_021,
                    my_vers: 3,
                    my_proc: 16,
                },
            },
            priv_: FixedOpaque([7; 16]),
        };
        let b = latch_xdr::to_bytes(&m);
        // 4+8 (client) + 4+12 (localhost) + 3*4 + 16.
        assert_eq!(b.len(), 12 + 16 + 12 + 16);
        assert_eq!(&b[..4], &6u32.to_be_bytes());
        assert_eq!(&b[b.len() - 16..], &[7; 16]);
        assert_eq!(latch_xdr::from_bytes::<Mon>(&b).unwrap(), m);
    }
}
