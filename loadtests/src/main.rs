//! `roomcast-loadtest`: Roomcast's load generator and benchmarks. Each scenario prints its
//! progress and a human summary on stderr and a JSON result on stdout.

mod history_memory;
mod publish;
mod redis;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "roomcast-loadtest", about = "Roomcast's load generator and benchmarks.")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// Publish throughput through Redis with history (the publish script) and without.
    Publish(publish::Options),
    /// Extra Redis memory per room with a full history.
    HistoryMemory(history_memory::Options),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let json = match Cli::parse().scenario {
        Scenario::Publish(options) => serde_json::to_string_pretty(&publish::run(&options).await?)?,
        Scenario::HistoryMemory(options) => serde_json::to_string_pretty(&history_memory::run(&options).await?)?,
    };
    println!("{json}");
    Ok(())
}
