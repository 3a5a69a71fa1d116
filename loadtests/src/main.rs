//! `roomcast-loadtest`: Roomcast's load generator and benchmarks. Each scenario prints its
//! progress and a human summary on stderr and a JSON result on stdout.

mod churn;
mod fanout;
mod floor;
mod history_memory;
mod idle;
mod noisy;
mod outbox;
mod pipe_publisher;
mod publish;
mod reconnect;
mod redis;
mod rpc;
mod sio;
mod stack;
mod typing;

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
    /// Idle connections: the replicas' memory per connection and the connect rate.
    Idle(idle::Options),
    /// Rooms spread over replicas, events published at stepped rates: throughput and latency.
    Fanout(fanout::Options),
    /// The fan-out floor: the same sockets and rates, one pre-encoded frame written to each
    /// member by a minimal server; its CPU per delivery, user and kernel.
    Floor(floor::Options),
    /// Client-originated typing storm across replicas.
    Typing(typing::Options),
    /// Kill a replica under load: time until its clients are back, events lost.
    Reconnect(reconnect::Options),
    /// Short-lived clients disconnecting mid-operation: what they leave behind (must be 0).
    Churn(churn::Options),
    /// One tenant's abuse (presence/typing floods, join churn, non-reading sockets, huge
    /// headers) against another tenant's latency and the replicas' memory.
    NoisyNeighbour(noisy::Options),
    /// Client RPCs through the gateway against direct calls to the same backend: calls/s and
    /// added latency at a few concurrency levels.
    Rpc(rpc::Options),
    /// Rows committed to the Postgres outbox, published by roomcast-relay, delivered to
    /// members: latency at steady insert rates and the drain rate in rows/s.
    Outbox(outbox::Options),
    /// Not a scenario: the `floor` scenario's server process.
    #[command(hide = true)]
    FloorServer(floor::ServerOptions),
    /// Not a scenario: the Roomcast stack's publisher process the scenarios start (publishes
    /// `room seq` lines read from stdin).
    Publisher(pipe_publisher::Options),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let json = match Cli::parse().scenario {
        Scenario::Publish(options) => serde_json::to_string_pretty(&publish::run(&options).await?)?,
        Scenario::HistoryMemory(options) => serde_json::to_string_pretty(&history_memory::run(&options).await?)?,
        Scenario::Idle(options) => serde_json::to_string_pretty(&idle::run(&options).await?)?,
        Scenario::Fanout(options) => serde_json::to_string_pretty(&fanout::run(&options).await?)?,
        Scenario::Floor(options) => serde_json::to_string_pretty(&floor::run(&options).await?)?,
        Scenario::Typing(options) => serde_json::to_string_pretty(&typing::run(&options).await?)?,
        Scenario::Reconnect(options) => serde_json::to_string_pretty(&reconnect::run(&options).await?)?,
        Scenario::NoisyNeighbour(options) => serde_json::to_string_pretty(&noisy::run(&options).await?)?,
        Scenario::Outbox(options) => serde_json::to_string_pretty(&outbox::run(&options).await?)?,
        Scenario::Rpc(options) => serde_json::to_string_pretty(&rpc::run(&options).await?)?,
        Scenario::Churn(options) => {
            let result = churn::run(&options).await?;
            println!("{}", serde_json::to_string_pretty(&result)?);
            if result.leaked() {
                anyhow::bail!("churn left state behind (see leaked_* above)");
            }
            return Ok(());
        }
        Scenario::Publisher(options) => return pipe_publisher::run(&options).await,
        Scenario::FloorServer(options) => return floor::serve(&options).await,
    };
    println!("{json}");
    Ok(())
}
