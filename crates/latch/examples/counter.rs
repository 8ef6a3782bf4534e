//! Increments a number in a shared file N times, each time under an
//! exclusive Latch lock, so that any number of these running at once on any
//! number of hosts never lose an update.
//!
//! ```text
//! counter SOCKET SERVER LOCKNAME FILE N
//! ```
//! SERVER is the NLM server holding the lock (`local` for this host).

use latch::client::{Client, LockSpec, Wait};
use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, socket, server, name, file, n] = &args[..] else {
        eprintln!("usage: counter SOCKET SERVER LOCKNAME FILE N");
        return ExitCode::from(2);
    };
    let Ok(n) = n.parse::<u32>() else {
        eprintln!("N must be a number");
        return ExitCode::from(2);
    };
    let latchd = match Client::connect(socket).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("counter: {e}");
            return ExitCode::from(69);
        }
    };
    let server = (server != "local").then_some(server.as_str());
    let spec = LockSpec::whole_file(server, name.as_bytes().to_vec());
    for _ in 0..n {
        let guard = match latchd.lock(&spec, Wait::Forever).await {
            Ok(g) => g,
            Err(e) => {
                eprintln!("counter: {e}");
                return ExitCode::FAILURE;
            }
        };
        let v: u64 = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        // Widen the window a lost update would need.
        tokio::task::yield_now().await;
        if let Err(e) = std::fs::write(file, format!("{}\n", v + 1)) {
            eprintln!("counter: {file}: {e}");
            return ExitCode::FAILURE;
        }
        if let Err(e) = guard.unlock().await {
            eprintln!("counter: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
