//! NLM wire types (X/Open XNFS; RFC 1813 appendix II for version 4).
//!
//! Versions 1 and 3 carry 32-bit offsets and lengths, version 4 64-bit
//! ones; everything else is laid out alike. Decoding turns either into the
//! same version-free structures, and encoding takes the version, so the
//! server logic never looks at the wire width.

use latch_xdr::{Decode, Encode, Opaque, Reader, Result, Writer, XdrString};

pub const PROGRAM: u32 = 100_021;

pub const NULL: u32 = 0;
pub const TEST: u32 = 1;
pub const LOCK: u32 = 2;
pub const CANCEL: u32 = 3;
pub const UNLOCK: u32 = 4;
pub const GRANTED: u32 = 5;
pub const TEST_MSG: u32 = 6;
pub const LOCK_MSG: u32 = 7;
pub const CANCEL_MSG: u32 = 8;
pub const UNLOCK_MSG: u32 = 9;
pub const GRANTED_MSG: u32 = 10;
pub const TEST_RES: u32 = 11;
pub const LOCK_RES: u32 = 12;
pub const CANCEL_RES: u32 = 13;
pub const UNLOCK_RES: u32 = 14;
pub const GRANTED_RES: u32 = 15;
/// The status monitor's reboot callback, as Linux lockd registers it.
pub const SM_NOTIFY: u32 = 16;
pub const SHARE: u32 = 20;
pub const UNSHARE: u32 = 21;
pub const NM_LOCK: u32 = 22;
pub const FREE_ALL: u32 = 23;
/// FreeBSD's statd callback: program 100021 version 0 ("NLM_SM") proc 1.
pub const NLM_SM_VERSION: u32 = 0;
pub const NLM_SM_NOTIFY: u32 = 1;

/// LM_MAXSTRLEN and MAXNETOBJ_SZ.
pub const MAX_STR: u32 = 1024;
pub type Netobj = Opaque<MAX_STR>;
pub type Name = XdrString<MAX_STR>;

/// `nlm4_stats` (versions 1 and 3 use the first six).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Stat {
    Granted = 0,
    Denied = 1,
    DeniedNolocks = 2,
    Blocked = 3,
    DeniedGracePeriod = 4,
    Deadlock = 5,
    Rofs = 6,
    StaleFh = 7,
    Fbig = 8,
    Failed = 9,
}

impl Stat {
    pub fn from_u32(v: u32) -> Option<Stat> {
        use Stat::*;
        [
            Granted,
            Denied,
            DeniedNolocks,
            Blocked,
            DeniedGracePeriod,
            Deadlock,
            Rofs,
            StaleFh,
            Fbig,
            Failed,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }

    /// The code as version `vers` may carry it: versions before 4 have no
    /// rofs, stale_fh, fbig or failed.
    pub fn for_version(self, vers: u32) -> Stat {
        match (vers >= 4, self) {
            (true, s) => s,
            (false, Stat::Rofs | Stat::StaleFh | Stat::Fbig) => Stat::Denied,
            (false, Stat::Failed) => Stat::DeniedNolocks,
            (false, s) => s,
        }
    }
}

/// Whether `vers` uses 64-bit ranges.
fn wide(vers: u32) -> bool {
    vers >= 4
}

fn get_range(r: &mut Reader<'_>, vers: u32) -> Result<(u64, u64)> {
    if wide(vers) {
        Ok((r.u64()?, r.u64()?))
    } else {
        Ok((u64::from(r.u32()?), u64::from(r.u32()?)))
    }
}

/// Writes a range; in versions 1 and 3 one beyond 32 bits is clipped: the
/// offset to the largest expressible, a length reaching the end to 0 (to
/// end of file), any other length to what fits.
fn put_range(w: &mut Writer, vers: u32, offset: u64, len: u64) {
    if wide(vers) {
        w.put_u64(offset);
        w.put_u64(len);
        return;
    }
    let off32 = u32::try_from(offset).unwrap_or(u32::MAX);
    let end = if len == 0 {
        None
    } else {
        offset.checked_add(len - 1)
    };
    let len32 = match end {
        None => 0,
        Some(e) if e > u64::from(u32::MAX) => 0,
        Some(_) => u32::try_from(len).unwrap_or(u32::MAX),
    };
    w.put_u32(off32);
    w.put_u32(len32);
}

/// `nlm4_lock` / `nlm_lock`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Lock {
    pub caller_name: Name,
    pub fh: Netobj,
    pub oh: Netobj,
    pub svid: u32,
    pub offset: u64,
    pub len: u64,
}

impl Lock {
    pub fn decode(r: &mut Reader<'_>, vers: u32) -> Result<Self> {
        let caller_name = Name::decode(r)?;
        let fh = Netobj::decode(r)?;
        let oh = Netobj::decode(r)?;
        let svid = r.u32()?;
        let (offset, len) = get_range(r, vers)?;
        Ok(Lock {
            caller_name,
            fh,
            oh,
            svid,
            offset,
            len,
        })
    }

    pub fn encode(&self, w: &mut Writer, vers: u32) {
        self.caller_name.encode(w);
        self.fh.encode(w);
        self.oh.encode(w);
        w.put_u32(self.svid);
        put_range(w, vers, self.offset, self.len);
    }
}

/// `nlm4_holder`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Holder {
    pub exclusive: bool,
    pub svid: u32,
    pub oh: Netobj,
    pub offset: u64,
    pub len: u64,
}

/// `nlm4_testargs` (also GRANTED's arguments).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct TestArgs {
    pub cookie: Netobj,
    pub exclusive: bool,
    pub lock: Lock,
}

/// `nlm4_lockargs`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LockArgs {
    pub cookie: Netobj,
    pub block: bool,
    pub exclusive: bool,
    pub lock: Lock,
    pub reclaim: bool,
    pub state: u32,
}

/// `nlm4_cancargs`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CancArgs {
    pub cookie: Netobj,
    pub block: bool,
    pub exclusive: bool,
    pub lock: Lock,
}

/// `nlm4_unlockargs`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct UnlockArgs {
    pub cookie: Netobj,
    pub lock: Lock,
}

/// `nlm4_share`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ShareLock {
    pub caller_name: Name,
    pub fh: Netobj,
    pub oh: Netobj,
    /// fsh_mode: what others are denied (DN=0, DR=1, DW=2, DRW=3).
    pub mode: u32,
    /// fsh_access: what the owner does (NONE=0, R=1, W=2, RW=3).
    pub access: u32,
}

/// `nlm4_shareargs`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ShareArgs {
    pub cookie: Netobj,
    pub share: ShareLock,
    pub reclaim: bool,
}

/// `nlm4_notify` (FREE_ALL).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct FreeAllArgs {
    pub name: XdrString<1025>,
    pub state: u32,
}

/// The statd callback argument: `{mon_name, state, priv[16]}`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SmStatus {
    pub mon_name: Name,
    pub state: u32,
    pub priv_: latch_xdr::FixedOpaque<16>,
}

/// `nlm4_testres`: the status and, when denied, the holder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRes {
    pub cookie: Netobj,
    pub stat: Stat,
    pub holder: Option<Holder>,
}

/// `nlm4_res`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Res {
    pub cookie: Netobj,
    pub stat: Stat,
}

/// `nlm4_shareres`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareRes {
    pub cookie: Netobj,
    pub stat: Stat,
    pub sequence: i32,
}

/// Version-aware codec for the structures above.
pub trait Versioned: Sized {
    fn decode_v(r: &mut Reader<'_>, vers: u32) -> Result<Self>;
    fn encode_v(&self, w: &mut Writer, vers: u32);
}

/// Decodes `T` from the whole of `bytes`.
pub fn decode<T: Versioned>(bytes: &[u8], vers: u32) -> Result<T> {
    let mut r = Reader::new(bytes);
    let v = T::decode_v(&mut r, vers)?;
    r.finish()?;
    Ok(v)
}

pub fn encode<T: Versioned>(v: &T, vers: u32) -> Vec<u8> {
    let mut w = Writer::new();
    v.encode_v(&mut w, vers);
    w.into_bytes()
}

impl Versioned for TestArgs {
    fn decode_v(r: &mut Reader<'_>, vers: u32) -> Result<Self> {
        Ok(TestArgs {
            cookie: Netobj::decode(r)?,
            exclusive: r.bool()?,
            lock: Lock::decode(r, vers)?,
        })
    }
    fn encode_v(&self, w: &mut Writer, vers: u32) {
        self.cookie.encode(w);
        w.put_bool(self.exclusive);
        self.lock.encode(w, vers);
    }
}

impl Versioned for LockArgs {
    fn decode_v(r: &mut Reader<'_>, vers: u32) -> Result<Self> {
        Ok(LockArgs {
            cookie: Netobj::decode(r)?,
            block: r.bool()?,
            exclusive: r.bool()?,
            lock: Lock::decode(r, vers)?,
            reclaim: r.bool()?,
            state: r.u32()?,
        })
    }
    fn encode_v(&self, w: &mut Writer, vers: u32) {
        self.cookie.encode(w);
        w.put_bool(self.block);
        w.put_bool(self.exclusive);
        self.lock.encode(w, vers);
        w.put_bool(self.reclaim);
        w.put_u32(self.state);
    }
}

impl Versioned for CancArgs {
    fn decode_v(r: &mut Reader<'_>, vers: u32) -> Result<Self> {
        Ok(CancArgs {
            cookie: Netobj::decode(r)?,
            block: r.bool()?,
            exclusive: r.bool()?,
            lock: Lock::decode(r, vers)?,
        })
    }
    fn encode_v(&self, w: &mut Writer, vers: u32) {
        self.cookie.encode(w);
        w.put_bool(self.block);
        w.put_bool(self.exclusive);
        self.lock.encode(w, vers);
    }
}

impl Versioned for UnlockArgs {
    fn decode_v(r: &mut Reader<'_>, vers: u32) -> Result<Self> {
        Ok(UnlockArgs {
            cookie: Netobj::decode(r)?,
            lock: Lock::decode(r, vers)?,
        })
    }
    fn encode_v(&self, w: &mut Writer, vers: u32) {
        self.cookie.encode(w);
        self.lock.encode(w, vers);
    }
}

impl Versioned for ShareArgs {
    fn decode_v(r: &mut Reader<'_>, _vers: u32) -> Result<Self> {
        Ok(ShareArgs {
            cookie: Netobj::decode(r)?,
            share: ShareLock {
                caller_name: Name::decode(r)?,
                fh: Netobj::decode(r)?,
                oh: Netobj::decode(r)?,
                mode: r.u32()?,
                access: r.u32()?,
            },
            reclaim: r.bool()?,
        })
    }
    fn encode_v(&self, w: &mut Writer, _vers: u32) {
        self.cookie.encode(w);
        self.share.caller_name.encode(w);
        self.share.fh.encode(w);
        self.share.oh.encode(w);
        w.put_u32(self.share.mode);
        w.put_u32(self.share.access);
        w.put_bool(self.reclaim);
    }
}

impl Versioned for FreeAllArgs {
    fn decode_v(r: &mut Reader<'_>, _vers: u32) -> Result<Self> {
        Ok(FreeAllArgs {
            name: XdrString::decode(r)?,
            state: r.u32()?,
        })
    }
    fn encode_v(&self, w: &mut Writer, _vers: u32) {
        self.name.encode(w);
        w.put_u32(self.state);
    }
}

impl Versioned for SmStatus {
    fn decode_v(r: &mut Reader<'_>, _vers: u32) -> Result<Self> {
        Ok(SmStatus {
            mon_name: Name::decode(r)?,
            state: r.u32()?,
            priv_: latch_xdr::FixedOpaque::decode(r)?,
        })
    }
    fn encode_v(&self, w: &mut Writer, _vers: u32) {
        self.mon_name.encode(w);
        w.put_u32(self.state);
        self.priv_.encode(w);
    }
}

fn get_stat(r: &mut Reader<'_>) -> Result<Stat> {
    let v = r.u32()?;
    Stat::from_u32(v).ok_or(latch_xdr::Error::BadDiscriminant {
        what: "nlm4_stats",
        value: v,
    })
}

impl Versioned for TestRes {
    fn decode_v(r: &mut Reader<'_>, vers: u32) -> Result<Self> {
        let cookie = Netobj::decode(r)?;
        let stat = get_stat(r)?;
        let holder = if stat == Stat::Denied {
            let exclusive = r.bool()?;
            let svid = r.u32()?;
            let oh = Netobj::decode(r)?;
            let (offset, len) = get_range(r, vers)?;
            Some(Holder {
                exclusive,
                svid,
                oh,
                offset,
                len,
            })
        } else {
            None
        };
        Ok(TestRes {
            cookie,
            stat,
            holder,
        })
    }
    fn encode_v(&self, w: &mut Writer, vers: u32) {
        self.cookie.encode(w);
        let stat = self.stat.for_version(vers);
        w.put_u32(stat as u32);
        if stat == Stat::Denied {
            let h = self.holder.clone().unwrap_or_default();
            w.put_bool(h.exclusive);
            w.put_u32(h.svid);
            h.oh.encode(w);
            put_range(w, vers, h.offset, h.len);
        }
    }
}

impl Versioned for Res {
    fn decode_v(r: &mut Reader<'_>, _vers: u32) -> Result<Self> {
        Ok(Res {
            cookie: Netobj::decode(r)?,
            stat: get_stat(r)?,
        })
    }
    fn encode_v(&self, w: &mut Writer, vers: u32) {
        self.cookie.encode(w);
        w.put_u32(self.stat.for_version(vers) as u32);
    }
}

impl Versioned for ShareRes {
    fn decode_v(r: &mut Reader<'_>, _vers: u32) -> Result<Self> {
        Ok(ShareRes {
            cookie: Netobj::decode(r)?,
            stat: get_stat(r)?,
            sequence: r.i32()?,
        })
    }
    fn encode_v(&self, w: &mut Writer, vers: u32) {
        self.cookie.encode(w);
        w.put_u32(self.stat.for_version(vers) as u32);
        w.put_i32(self.sequence);
    }
}

/// Our registration at the local status monitor for `name`: call NLM
/// version 3 procedure 16 back (what rpc.statd accepts).
pub fn monitor_id(name: &[u8]) -> latch_nsm::proto::MonId {
    use latch_nsm::proto as sm;
    sm::MonId {
        mon_name: latch_xdr::XdrString::new(name.to_vec()).unwrap_or_default(),
        my_id: sm::MyId {
            my_name: latch_xdr::XdrString::from_text("localhost").unwrap_or_default(),
            my_prog: PROGRAM,
            my_vers: 3,
            my_proc: SM_NOTIFY,
        },
    }
}

/// SM_MON's arguments for `name`, asking Latch's status monitor for a
/// notice about it that came before the watch, too (rpc.statd ignores
/// that: `priv` is opaque to it).
pub fn monitor_args(name: &[u8]) -> latch_nsm::proto::Mon {
    latch_nsm::proto::Mon {
        mon_id: monitor_id(name),
        priv_: latch_xdr::FixedOpaque(latch_nsm::proto::PRIV_LATE_OK),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(offset: u64, len: u64) -> Lock {
        Lock {
            caller_name: Name::from_text("client").unwrap(),
            fh: Netobj::from_slice(b"fh").unwrap(),
            oh: Netobj::from_slice(b"oh").unwrap(),
            svid: 42,
            offset,
            len,
        }
    }

    #[test]
    fn every_structure_round_trips_in_both_widths() {
        for vers in [1, 3, 4] {
            let a = LockArgs {
                cookie: Netobj::from_slice(b"c").unwrap(),
                block: true,
                exclusive: true,
                lock: lock(10, 20),
                reclaim: false,
                state: 3,
            };
            assert_eq!(decode::<LockArgs>(&encode(&a, vers), vers).unwrap(), a);
            let t = TestRes {
                cookie: Netobj::from_slice(b"c").unwrap(),
                stat: Stat::Denied,
                holder: Some(Holder {
                    exclusive: true,
                    svid: 7,
                    oh: Netobj::from_slice(b"x").unwrap(),
                    offset: 1,
                    len: 2,
                }),
            };
            assert_eq!(decode::<TestRes>(&encode(&t, vers), vers).unwrap(), t);
        }
        // v1/v3 lock arguments are 8 bytes shorter than v4's.
        let a = TestArgs::default();
        assert_eq!(encode(&a, 4).len(), encode(&a, 1).len() + 8);
    }

    #[test]
    fn v1_never_carries_v4_codes_or_wide_ranges() {
        let r = Res {
            cookie: Netobj::default(),
            stat: Stat::StaleFh,
        };
        assert_eq!(decode::<Res>(&encode(&r, 1), 1).unwrap().stat, Stat::Denied);
        assert_eq!(
            decode::<Res>(&encode(&r, 4), 4).unwrap().stat,
            Stat::StaleFh
        );
        let f = Res {
            cookie: Netobj::default(),
            stat: Stat::Failed,
        };
        assert_eq!(
            decode::<Res>(&encode(&f, 3), 3).unwrap().stat,
            Stat::DeniedNolocks
        );
        let t = |offset, len| TestRes {
            cookie: Netobj::default(),
            stat: Stat::Denied,
            holder: Some(Holder {
                offset,
                len,
                ..Holder::default()
            }),
        };
        let back = |t: TestRes| {
            decode::<TestRes>(&encode(&t, 1), 1)
                .unwrap()
                .holder
                .unwrap()
        };
        // Reaching past 2^32: reported as "to end".
        let h = back(t(10, 1 << 40));
        assert_eq!((h.offset, h.len), (10, 0));
        // Starting past 2^32: the largest offset, to end.
        let h = back(t(1 << 33, 5));
        assert_eq!((h.offset, h.len), (u64::from(u32::MAX), 0));
        let h = back(t(100, 50));
        assert_eq!((h.offset, h.len), (100, 50));
    }

    #[test]
    fn unknown_status_codes_do_not_decode() {
        let mut w = Writer::new();
        Netobj::default().encode(&mut w);
        w.put_u32(77);
        assert!(decode::<Res>(w.as_bytes(), 4).is_err());
    }
}
