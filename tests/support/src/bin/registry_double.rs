//! `registry-double --listen 127.0.0.1:8081`: runs sluice-testkit's schema-registry TEST DOUBLE (not a
//! registry: see `sluice_testkit::registry`) until killed. Prints one line once it accepts connections.

use std::io::Write;
use std::process::ExitCode;

use sluice_testkit::registry::RegistryDouble;

const USAGE: &str = "usage: registry-double [--listen ADDR]   (default 127.0.0.1:8081)";

fn main() -> ExitCode {
    let listen = match parse_args(std::env::args().skip(1)) {
        Ok(Some(listen)) => listen,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("registry-double: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let registry = match RegistryDouble::start_on(listen.as_str()) {
        Ok(registry) => registry,
        Err(err) => {
            eprintln!("registry-double: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    println!("registry-double listening on {}", registry.url());
    let _ = std::io::stdout().flush();
    // The server runs on its own thread; this one only keeps the process alive until it is killed.
    loop {
        std::thread::park();
    }
}

/// The listen address, or `None` when help was asked for.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<String>, String> {
    let mut listen = String::from("127.0.0.1:8081");
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => {
                listen = args
                    .next()
                    .ok_or("--listen needs an address, e.g. 127.0.0.1:8081")?
            }
            other => match other.strip_prefix("--listen=") {
                Some(addr) => listen = addr.to_owned(),
                None => return Err(format!("unknown argument `{other}`")),
            },
        }
    }
    Ok(Some(listen))
}
