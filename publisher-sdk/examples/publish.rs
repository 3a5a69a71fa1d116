//! Publish one event or typing indicator from the command line.
//!
//! ```text
//! publish <redis-url> tenant  <t>     <event> <json>
//! publish <redis-url> project <t> <p> <event> <json>
//! publish <redis-url> channel <t> <c> <event> <json>
//! publish <redis-url> user    <t> <u> <event> <json>
//! publish <redis-url> typing  <t> <c> <user> true|false
//! ```
//! Prints the receipt as JSON. Set ROOMCAST_REDIS_PREFIX to use another channel prefix.

use std::process::ExitCode;

use roomcast_publisher::{PublishError, Publisher};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(receipt) => {
            println!("{receipt}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("publish: {message}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: &[String]) -> Result<String, String> {
    let usage = "usage: publish <redis-url> (tenant <t> | project <t> <p> | channel <t> <c> | user <t> <u>) <event> <json>\n       publish <redis-url> typing <t> <channel> <user> true|false";
    let arg = |i: usize| args.get(i).map(String::as_str).ok_or_else(|| usage.to_owned());
    let mut publisher = Publisher::connect(arg(0)?).await.map_err(|e| e.to_string())?;
    if let Ok(prefix) = std::env::var("ROOMCAST_REDIS_PREFIX") {
        publisher = publisher.with_prefix(prefix).map_err(|e| e.to_string())?;
    }
    let json = |i: usize| -> Result<serde_json::Value, String> {
        serde_json::from_str(arg(i)?).map_err(|e| format!("payload is not JSON: {e}"))
    };
    let receipt = match arg(1)? {
        "typing" => {
            let typing = arg(5)?.parse::<bool>().map_err(|_| usage.to_owned())?;
            publisher.typing(arg(2)?, arg(3)?, arg(4)?, typing).await
        }
        "tenant" => publisher.tenant(arg(2)?).emit(arg(3)?, &json(4)?).await,
        "project" => publisher.project(arg(2)?, arg(3)?).emit(arg(4)?, &json(5)?).await,
        "channel" => publisher.channel(arg(2)?, arg(3)?).emit(arg(4)?, &json(5)?).await,
        "user" => publisher.user(arg(2)?, arg(3)?).emit(arg(4)?, &json(5)?).await,
        _ => return Err(usage.to_owned()),
    }
    .map_err(|e: PublishError| e.to_string())?;
    serde_json::to_string(&receipt).map_err(|e| e.to_string())
}
