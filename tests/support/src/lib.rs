//! Test harness for sluice: throwaway PostgreSQL clusters, a tansu broker, a schema-registry test
//! double and a MongoDB wire-protocol test double. Every fixture owns a temporary directory and its
//! processes, and cleans both up on drop.

pub mod broker;
pub mod config;
pub mod mongo_double;
pub mod pki;
pub mod postgres;
pub mod python;
pub mod registry;

mod log_tail;
mod tls;

/// The BSON crate the MongoDB double speaks, for tests that build change events.
pub use bson;

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result};

/// Where scripts/provision.sh installs what the tests need outside the repository (tansu, the Python
/// venv): `$SLUICE_CACHE_DIR`, else `$XDG_CACHE_HOME/sluice`, else `~/.cache/sluice`.
pub fn cache_dir() -> Result<PathBuf> {
    Ok(
        match (
            std::env::var_os("SLUICE_CACHE_DIR"),
            std::env::var_os("XDG_CACHE_HOME"),
        ) {
            (Some(dir), _) => PathBuf::from(dir),
            (None, Some(xdg)) => PathBuf::from(xdg).join("sluice"),
            (None, None) => {
                let home = std::env::var_os("HOME").context(
                    "HOME is not set, cannot locate what scripts/provision.sh installed",
                )?;
                PathBuf::from(home).join(".cache").join("sluice")
            }
        },
    )
}

/// A loopback TCP port that was free a moment ago.
///
/// The OS picks it (bind to port 0), so parallel tests do not collide on a fixed range; the ports handed
/// out by this process are remembered so two fixtures started back to back never get the same one.
/// There is still a small window before the caller binds it, which is accepted for tests.
pub fn free_port() -> u16 {
    static HANDED_OUT: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let handed_out = HANDED_OUT.get_or_init(Mutex::default);
    loop {
        let listener =
            TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0 to find a free port");
        let port = listener
            .local_addr()
            .expect("local address of a bound listener")
            .port();
        if handed_out
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(port)
        {
            return port;
        }
    }
}

/// Sends signal `name` (`TERM`, `STOP`, …) to process `pid` with kill(1); a failure carries kill's own
/// message (no such process, not permitted).
pub fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let output = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .output()
        .context("running kill")?;
    if !output.status.success() {
        anyhow::bail!(
            "kill -{name} {pid} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// GET `path` from an HTTP endpoint at `address` (`host:port`), such as sluice's `[api]`; returns the
/// status line and the body.
pub fn http_get(address: &str, path: &str) -> anyhow::Result<(String, String)> {
    use anyhow::Context;
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address)
        .with_context(|| format!("connecting to {address}"))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP response from {address}{path}"))?;
    Ok((
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    ))
}

/// A random hex string, for passwords and consumer-group names that must not clash between tests.
pub fn random_hex() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS per instance: enough randomness without a dependency.
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    format!("{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    #[test]
    fn free_ports_are_not_handed_out_twice() {
        let ports: std::collections::HashSet<u16> = (0..50).map(|_| super::free_port()).collect();
        assert_eq!(ports.len(), 50);
    }
}
