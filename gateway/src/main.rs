//! `roomcast-gateway`: parse the configuration, set up logging, run until SIGTERM/SIGINT.

use std::{process::ExitCode, time::Duration};

use roomcast_gateway::{Config, Gateway, logging, shutdown};

fn main() -> ExitCode {
    let config = Config::from_env_and_args();
    if let Err(e) = config.validate() {
        eprintln!("roomcast-gateway: {e}");
        return ExitCode::from(2);
    }
    if let Some(who) = config.print_token.clone() {
        return print_token(&config, &who);
    }
    logging::init(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("roomcast-gateway: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let dev = config.dev;
        let gateway = match Gateway::bind(config).await {
            Ok(g) => g,
            Err(e) => {
                eprintln!("roomcast-gateway: {e}");
                return ExitCode::from(2);
            }
        };
        if dev {
            print_dev_banner(&gateway);
        }
        match gateway.run(shutdown::signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("roomcast-gateway: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `--print-token TENANT/USER`: a token for trying a deployment out, then exit.
fn print_token(config: &Config, who: &str) -> ExitCode {
    let Some((tenant, user)) = who.split_once('/') else {
        eprintln!("roomcast-gateway: --print-token: expected TENANT/USER, e.g. demo/ada");
        return ExitCode::from(2);
    };
    let verifier = match roomcast_gateway::auth::Verifier::from_config(config) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("roomcast-gateway: {e}");
            return ExitCode::from(2);
        }
    };
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

fn print_dev_banner(gateway: &Gateway) {
    let ttl = Duration::from_secs(24 * 3600);
    let Some(token) = gateway.token_for("demo", "demo-user", ttl) else {
        return;
    };
    let port = gateway.public_addr().port();
    let admin = gateway.admin_addr().port();
    let api_key = gateway.dev_api_key().unwrap_or("<your ROOMCAST_API_KEY>");
    println!(
        r#"
Roomcast is running in --dev mode: a random signing secret was generated for this run only.
Never use --dev in production.

  Socket.IO   http://localhost:{port}/socket.io
  Metrics     http://localhost:{admin}/metrics

Demo token (user "demo-user", tenant "demo", every project and channel, valid 24 h):

  {token}

From Node or a browser bundle (npm install socket.io-client):

  import {{ io }} from "socket.io-client";
  const socket = io("http://localhost:{port}", {{ auth: {{ token: "{token}" }} }});
  socket.on("connect", () => socket.emit("join", {{ channel: "general" }}, (ack) => console.log(ack)));
  socket.on("connect_error", (err) => console.error(err.message)); // e.g. "token_expired"
  socket.on("message:new", (data, meta) => console.log(data, meta));

Publish to that channel from any backend (API key generated for this run):

  curl -X POST http://localhost:{port}/v1/publish \
    -H "Authorization: Bearer {api_key}" -H "Content-Type: application/json" \
    -d '{{"tenant":"demo","channel":"general","event":"message:new","data":{{"text":"hello"}}}}'

Or look at the Engine.IO handshake with curl:

  curl "http://localhost:{port}/socket.io/?EIO=4&transport=polling&token={token}"
"#
    );
}
