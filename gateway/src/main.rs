//! `roomcast-gateway`: parse the configuration, set up logging, run until SIGTERM/SIGINT.

use std::{process::ExitCode, time::Duration};

use roomcast_gateway::{Config, Gateway, Verifier, dev_secret_path, init_logging, shutdown_signal};

fn main() -> ExitCode {
    let config = match Config::from_env_and_args() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("roomcast-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = config.validate() {
        eprintln!("roomcast-gateway: {e}");
        return ExitCode::from(2);
    }
    if let Some(who) = config.print_token.clone() {
        return print_token(&config, &who);
    }
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("roomcast-gateway: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let shutdown_timeout = config.shutdown_timeout;
    let code = runtime.block_on(async {
        let dev = config.dev.then(|| DevKeys::of(&config));
        let gateway = match Gateway::bind(config).await {
            Ok(g) => g,
            Err(e) => {
                eprintln!("roomcast-gateway: {e}");
                return ExitCode::from(2);
            }
        };
        if let Some(keys) = dev {
            print_dev_banner(&gateway, &keys);
        }
        let shutdown = async {
            shutdown_signal().await;
            // Whatever a task is doing (even spinning without yielding, which no timer can
            // interrupt), the process is gone shortly after the shutdown timeout.
            watchdog(shutdown_timeout + WATCHDOG_MARGIN, || {
                eprintln!("roomcast-gateway: shutdown timeout passed with work still running; exiting");
                std::process::exit(1);
            });
        };
        match gateway.run(shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("roomcast-gateway: {e}");
                ExitCode::FAILURE
            }
        }
    });
    // Tasks still running (aborted ones stop at their next await) are not waited for.
    runtime.shutdown_timeout(Duration::from_millis(100));
    code
}

/// How long past `ROOMCAST_SHUTDOWN_TIMEOUT` the watchdog lets an orderly shutdown finish.
const WATCHDOG_MARGIN: Duration = Duration::from_millis(500);

/// Runs `on_expiry` on a thread of its own after `after`, unless the process ended first. A
/// plain thread, not a task: it must fire even when every runtime worker is stuck.
fn watchdog(after: Duration, on_expiry: impl FnOnce() + Send + 'static) {
    let spawned = std::thread::Builder::new().name("shutdown-watchdog".into()).spawn(move || {
        std::thread::sleep(after);
        on_expiry();
    });
    if let Err(e) = spawned {
        eprintln!("roomcast-gateway: cannot start the shutdown watchdog: {e}");
    }
}

/// `--print-token TENANT/USER`: a token for trying a deployment out, then exit.
fn print_token(config: &Config, who: &str) -> ExitCode {
    let Some((tenant, user)) = who.split_once('/') else {
        eprintln!("roomcast-gateway: --print-token: expected TENANT/USER, e.g. demo/ada");
        return ExitCode::from(2);
    };
    let verifier = match Verifier::from_config(config) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("roomcast-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    if config.dev && config.jwt_secret.is_none() && config.jwt_secret_file.is_none() && dev_secret_path().is_none() {
        eprintln!(
            "roomcast-gateway: --print-token: --dev keeps its secret under $XDG_CACHE_HOME or $HOME, and neither is set"
        );
        return ExitCode::from(2);
    }
    if roomcast_publisher::validate_id(tenant).and(roomcast_publisher::validate_id(user)).is_err() {
        eprintln!("roomcast-gateway: --print-token: {who:?} is not a valid TENANT/USER");
        return ExitCode::from(2);
    }
    match verifier.mint_token(tenant, user, Duration::from_secs(3600)) {
        Some(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        None => {
            eprintln!(
                "roomcast-gateway: --print-token needs an HMAC secret (ROOMCAST_JWT_SECRET or ROOMCAST_JWT_SECRET_FILE)"
            );
            ExitCode::from(2)
        }
    }
}

/// Where the `--dev` banner's keys come from: what it says must be what the gateway uses.
struct DevKeys {
    /// How tokens are signed, for people, when a secret is configured (else `--dev`'s own).
    signing: Option<String>,
    /// The `Authorization` value of the curl example, when a key is configured (else the
    /// gateway generated one for this run).
    configured_api_key: Option<&'static str>,
}

impl DevKeys {
    fn of(config: &Config) -> DevKeys {
        let signing = if config.jwt_secret.is_some() {
            Some("tokens are signed with ROOMCAST_JWT_SECRET".to_owned())
        } else {
            config.jwt_secret_file.as_ref().map(|path| {
                format!("tokens are signed with the secret in ROOMCAST_JWT_SECRET_FILE ({})", path.display())
            })
        };
        let configured_api_key = if !config.api_key.is_empty() {
            Some("$ROOMCAST_API_KEY")
        } else if config.api_key_file.is_some() {
            Some("<a key from ROOMCAST_API_KEY_FILE>")
        } else {
            None
        };
        DevKeys { signing, configured_api_key }
    }
}

fn print_dev_banner(gateway: &Gateway, keys: &DevKeys) {
    let ttl = Duration::from_secs(24 * 3600);
    let (Some(ada), Some(bob)) = (gateway.token_for("demo", "ada", ttl), gateway.token_for("demo", "bob", ttl)) else {
        return;
    };
    let port = gateway.public_addr().port();
    let admin = gateway.admin_addr().port();
    let api = gateway.api_addr().port();
    let (api_key, api_key_note) = match (keys.configured_api_key, gateway.dev_api_key()) {
        (Some(configured), _) => (configured.to_owned(), "with your configured API key"),
        (None, Some(generated)) => (generated.to_owned(), "with the API key generated for this run"),
        (None, None) => ("<no API key>".to_owned(), "once an API key is configured"),
    };
    let console = match gateway.dev_console_token() {
        Some(token) => format!("http://localhost:{admin}/console#token={token}"),
        None => format!("http://localhost:{admin}/console (sign in with a token of ROOMCAST_CONSOLE_TOKENS)"),
    };
    // Read after the gateway started: the file exists only if it could be written.
    let signing = keys.signing.clone().unwrap_or_else(|| match dev_secret_path().filter(|p| p.exists()) {
        Some(path) => {
            format!("tokens are signed with the --dev secret kept in {} (delete it to rotate)", path.display())
        }
        None => "tokens are signed with a secret generated for this run only".to_owned(),
    });
    println!(
        r#"
Roomcast is running in --dev mode; {signing}.
Never use --dev in production.

  Socket.IO   http://localhost:{port}/socket.io
  Backend API http://localhost:{api}/v1/publish (keep this port internal; /openapi.json)
  Metrics     http://localhost:{admin}/metrics
  Console     {console}

Demo tokens for tenant "demo", every project and channel, valid 24 h. Typing and presence show
*other* users, so open one client as ada and one as bob:

  ada  {ada}
  bob  {bob}

  More users: roomcast-gateway --dev --print-token demo/carol

From Node (npm install socket.io-client; save as client.mjs, run node client.mjs):

  import {{ io }} from "socket.io-client";
  const socket = io("http://localhost:{port}", {{ auth: {{ token: "{ada}" }} }});
  socket.on("connect", () => socket.emit("join", {{ channel: "general" }}, (ack) => console.log(ack)));
  socket.on("connect_error", (err) => console.error(err.message)); // e.g. "token_expired"
  socket.on("message:new", (data, meta) => console.log(data, meta));

Publish to that channel from any backend, {api_key_note}:

  curl -X POST http://localhost:{api}/v1/publish \
    -H "Authorization: Bearer {api_key}" -H "Content-Type: application/json" \
    -d '{{"tenant":"demo","channel":"general","event":"message:new","data":{{"text":"hello"}}}}'

Or look at the Engine.IO handshake with curl:

  curl "http://localhost:{port}/socket.io/?EIO=4&transport=polling&token={ada}"
"#
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_fires_after_its_time_even_with_the_runtime_stuck() {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        // The only worker spins without yielding: no timer of the runtime can fire now.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let spinning = stop.clone();
        runtime.spawn(async move { while !spinning.load(std::sync::atomic::Ordering::Relaxed) {} });
        let (fired, rx) = std::sync::mpsc::channel();
        let started = std::time::Instant::now();
        watchdog(Duration::from_millis(200), move || fired.send(()).unwrap());
        rx.recv_timeout(Duration::from_secs(30)).expect("the watchdog fired");
        assert!(started.elapsed() >= Duration::from_millis(200));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        runtime.shutdown_timeout(Duration::from_secs(1));
    }
}
