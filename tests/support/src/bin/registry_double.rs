//! `registry-double --listen 127.0.0.1:8081`: runs sluice-testkit's schema-registry TEST DOUBLE (not a
//! registry: see `sluice_testkit::registry`) until killed. Prints one line once it accepts connections.
//! `--tls-cert`/`--tls-key` serve TLS, `--client-ca` demands a client certificate that authority signed,
//! `--basic USER:PASSWORD` or `--bearer TOKEN` demand credentials: for trying sluice's `[avro]` TLS and
//! authentication keys by hand.

use std::io::Write;
use std::process::ExitCode;

use sluice_testkit::registry::{RegistryDouble, RegistryOptions};

const USAGE: &str =
    "usage: registry-double [--listen ADDR] [--tls-cert PEM --tls-key PEM [--client-ca PEM]]
                      [--basic USER:PASSWORD | --bearer TOKEN]
  --listen ADDR      where to listen (default 127.0.0.1:8081)
  --tls-cert PEM     serve TLS with this certificate chain (and --tls-key, its private key)
  --client-ca PEM    demand a client certificate signed by this authority (needs TLS)
  --basic U:P        demand HTTP basic authentication with these credentials
  --bearer TOKEN     demand this bearer token";

/// What the command line asks for.
struct Args {
    listen: String,
    options: RegistryOptions,
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("registry-double: {message}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let registry = match args.options.start_on(args.listen.as_str()) {
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

/// The listen address and options, or `None` when help was asked for.
fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut listen = String::from("127.0.0.1:8081");
    let mut options = RegistryDouble::options();
    let (mut cert, mut key) = (None, None);
    while let Some(arg) = args.next() {
        // `--flag=value` and `--flag value` alike.
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg, None),
        };
        let mut value = |what: &str| {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs {what}"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" => listen = value("an address, e.g. 127.0.0.1:8081")?,
            "--tls-cert" => cert = Some(value("a PEM file")?),
            "--tls-key" => key = Some(value("a PEM file")?),
            "--client-ca" => options = options.require_client_certificate(value("a PEM file")?),
            "--basic" => {
                let credentials = value("USER:PASSWORD")?;
                let (user, password) = credentials
                    .split_once(':')
                    .ok_or("--basic needs USER:PASSWORD")?;
                options = options.require_basic(user, password);
            }
            "--bearer" => options = options.require_bearer(&value("a token")?),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    options = match (cert, key) {
        (Some(cert), Some(key)) => options.tls(cert, key),
        (None, None) => options,
        _ => return Err("--tls-cert and --tls-key go together".to_owned()),
    };
    Ok(Some(Args { listen, options }))
}
