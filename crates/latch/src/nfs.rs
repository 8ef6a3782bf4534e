//! Turning an NFS path (`server:/export/dir/file`) into the file handle the
//! server gives out, so that a lock taken through Latch is on the same file
//! the kernel's NFS client locks: MOUNT v3 (MNT) for the export, then NFSv3
//! LOOKUP for each remaining component.

use latch_io::portmap::getport;
use latch_io::RpcClient;
use latch_oncrpc::msg::{AuthSys, Credential};
use latch_xdr::{Reader, Writer, XdrString};
use std::net::{IpAddr, SocketAddr};

const MOUNT: u32 = 100_005;
const MOUNT_V3: u32 = 3;
const MNT: u32 = 1;
const UMNT: u32 = 3;
const NFS: u32 = 100_003;
const NFS_V3: u32 = 3;
const LOOKUP: u32 = 3;
/// NFS3_FHSIZE.
const FH_MAX: u32 = 64;
/// MNTPATHLEN.
const PATH_MAX: usize = 1024;

/// `server:/path` split, if `s` is one.
pub fn split(s: &str) -> Option<(&str, &str)> {
    let (host, _) = s.split_once(":/")?;
    if host.is_empty() {
        return None;
    }
    Some((host, &s[host.len() + 1..]))
}

/// AUTH_SYS as this process: NFS servers refuse AUTH_NONE.
fn credential() -> Credential {
    // SAFETY: getuid/getgid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    Credential::Sys(AuthSys {
        stamp: 0,
        machine_name: XdrString::from_text("latch").unwrap_or_default(),
        uid,
        gid,
        gids: vec![gid],
    })
}

async fn resolve_host(host: &str) -> Result<IpAddr, String> {
    if let Ok(ip) = host.parse() {
        return Ok(ip);
    }
    tokio::net::lookup_host((host, 0))
        .await
        .ok()
        .and_then(|mut a| a.next())
        .map(|a| a.ip())
        .ok_or_else(|| format!("cannot resolve {host}"))
}

/// The handle of `path` on `host`, as its NFSv3 server names it.
pub async fn file_handle(host: &str, path: &str) -> Result<Vec<u8>, String> {
    if path.len() > PATH_MAX || !path.starts_with('/') {
        return Err(format!("{path:?} is not an absolute path"));
    }
    let ip = resolve_host(host).await?;
    let any = SocketAddr::new(ip, 0);
    let mut pm = RpcClient::udp(any, true).map_err(|e| e.to_string())?;
    pm.cred = credential();
    let port = |prog, vers| getport(&pm, ip, latch_oncrpc::rpcbind::PORT, prog, vers, true);
    let mount_port = port(MOUNT, MOUNT_V3)
        .await
        .map_err(|e| format!("{host}: rpcbind: {e}"))?
        .ok_or_else(|| format!("{host} does not serve MOUNT v3"))?;
    let mut mount = RpcClient::tcp(SocketAddr::new(ip, mount_port), true)
        .await
        .map_err(|e| format!("{host}: MOUNT: {e}"))?;
    mount.cred = credential();
    // The export is the longest prefix of the path the server will mount.
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let mut found = None;
    for n in (0..=parts.len()).rev() {
        let dir = format!("/{}", parts[..n].join("/"));
        let mut w = Writer::new();
        w.put_opaque_var(dir.as_bytes());
        let res = mount
            .call(None, MOUNT, MOUNT_V3, MNT, w.as_bytes())
            .await
            .map_err(|e| format!("{host}: MNT {dir}: {e}"))?;
        let mut r = Reader::new(&res);
        if r.u32().map_err(|e| e.to_string())? == 0 {
            let fh = r.opaque_var(FH_MAX).map_err(|e| e.to_string())?.to_vec();
            found = Some((dir, fh, n));
            break;
        }
    }
    let (export, mut fh, used) =
        found.ok_or_else(|| format!("{host} exports no prefix of {path}"))?;
    let nfs_port = port(NFS, NFS_V3)
        .await
        .map_err(|e| format!("{host}: rpcbind: {e}"))?
        .ok_or_else(|| format!("{host} does not serve NFS v3"))?;
    let mut nfs = RpcClient::tcp(SocketAddr::new(ip, nfs_port), true)
        .await
        .map_err(|e| format!("{host}: NFS: {e}"))?;
    nfs.cred = credential();
    for name in &parts[used..] {
        let mut w = Writer::new();
        w.put_opaque_var(&fh);
        w.put_opaque_var(name.as_bytes());
        let res = nfs
            .call(None, NFS, NFS_V3, LOOKUP, w.as_bytes())
            .await
            .map_err(|e| format!("{host}: LOOKUP {name}: {e}"))?;
        let mut r = Reader::new(&res);
        match r.u32().map_err(|e| e.to_string())? {
            0 => fh = r.opaque_var(FH_MAX).map_err(|e| e.to_string())?.to_vec(),
            2 => return Err(format!("{host}:{path}: no such file (at {name:?})")),
            13 => return Err(format!("{host}:{path}: permission denied (at {name:?})")),
            s => {
                return Err(format!(
                    "{host}:{path}: LOOKUP {name:?} failed with NFS status {s}"
                ))
            }
        }
    }
    // Tell the server we are done with the export (best effort).
    let mut w = Writer::new();
    w.put_opaque_var(export.as_bytes());
    let _ = mount.call(None, MOUNT, MOUNT_V3, UMNT, w.as_bytes()).await;
    Ok(fh)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_nfs_paths_only() {
        assert_eq!(split("srv:/export/a"), Some(("srv", "/export/a")));
        assert_eq!(split("10.0.0.1:/x"), Some(("10.0.0.1", "/x")));
        assert_eq!(split("plainname"), None);
        assert_eq!(split(":/x"), None);
    }
}
