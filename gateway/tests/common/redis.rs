//! Real `redis-server` processes on ephemeral ports: a standalone server and a 3-master
//! cluster, each of which a test can stop, restart or inspect with `redis-cli`.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::WAIT;

/// A port that was free a moment ago. Another process may take it before redis-server binds it
/// (redis cannot be told to bind port 0 and report it), so servers are started with
/// [`RedisServer::start_on_a_free_port`], which checks the server answering is its own and
/// tries another port if not.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs `redis-cli -p port args...` and returns its output (trimmed).
pub fn cli(port: u16, args: &[&str]) -> String {
    let out =
        Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output().expect("redis-cli is installed");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// One `redis-server` process.
pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
    child: Option<Child>,
}

impl RedisServer {
    /// A standalone server without persistence (a restart loses everything, like the
    /// machine's CI Redis).
    pub fn start() -> RedisServer {
        Self::start_on_a_free_port(|_| Vec::new())
    }

    /// A server with the arguments `extra(port)` on a port the OS says is free; if another
    /// process took it meanwhile, on another.
    fn start_on_a_free_port(extra: impl Fn(u16) -> Vec<String>) -> RedisServer {
        for _ in 0..10 {
            let port = free_port();
            let mut server = RedisServer { port, dir: tempfile::tempdir().unwrap(), extra: extra(port), child: None };
            if server.try_spawn() {
                return server;
            }
        }
        panic!("redis-server could not bind any of 10 free ports");
    }

    fn spawn(&mut self) {
        assert!(self.try_spawn(), "redis-server could not start again on port {}", self.port);
    }

    /// Starts the process; `false` if it exited (its port was taken). Waits until *this*
    /// process answers PING, not another server that took the port.
    fn try_spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        let (port, pid) = (self.port, child.id());
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(child) = &mut self.child
                && child.try_wait().is_ok_and(|status| status.is_some())
            {
                self.child = None;
                return false;
            }
            let ours = |info: String| info.lines().any(|l| l.trim() == format!("process_id:{pid}"));
            if cli(port, &["PING"]) == "PONG" && ours(cli(port, &["INFO", "server"])) {
                return true;
            }
            assert!(Instant::now() < deadline, "timed out waiting for redis-server to answer PING");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL: no goodbye to clients, as in a crash).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process keeps its connections but answers nothing, like a hung host.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after [`RedisServer::pause`].
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// Starts the server again on the same port (and data directory).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        self.spawn();
    }

    /// `redis-cli` against this server.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Subscribers of `channel` on a standalone server (`PUBSUB NUMSUB`).
pub fn numsub(port: u16, channel: &str) -> u64 {
    cli(port, &["PUBSUB", "NUMSUB", channel]).lines().nth(1).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

/// Subscribers of shard `channel` on the node serving it (`PUBSUB SHARDNUMSUB`).
pub fn shardnumsub(port: u16, channel: &str) -> u64 {
    cli(port, &["PUBSUB", "SHARDNUMSUB", channel]).lines().nth(1).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
}

/// A Redis Cluster of three masters, no replicas.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_on_a_free_port(|port| {
                    vec![
                        "--cluster-enabled".into(),
                        "yes".into(),
                        "--cluster-config-file".into(),
                        format!("nodes-{port}.conf"),
                        "--cluster-node-timeout".into(),
                        "2000".into(),
                    ]
                })
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = RedisCluster { nodes };
        cluster.wait_healthy();
        cluster
    }

    /// Waits until every node reports `cluster_state:ok` and knows all three masters.
    pub fn wait_healthy(&self) {
        for node in &self.nodes {
            let port = node.port;
            wait_for("cluster_state:ok", || {
                let info = cli(port, &["CLUSTER", "INFO"]);
                info.contains("cluster_state:ok") && info.contains("cluster_known_nodes:3")
            });
        }
    }

    /// `redis-cluster://` URL naming every node.
    pub fn url(&self) -> String {
        let first = self.nodes[0].port;
        let others: Vec<String> = self.nodes[1..].iter().map(|n| format!("node=127.0.0.1:{}", n.port)).collect();
        format!("redis-cluster://127.0.0.1:{first}?{}", others.join("&"))
    }

    /// Index of the node that serves `key`'s slot.
    pub fn owner_of(&self, key: &str) -> usize {
        let slot: u16 = cli(self.nodes[0].port, &["CLUSTER", "KEYSLOT", key]).parse().unwrap();
        // CLUSTER NODES lines: <id> <ip:port@cport> <flags> <master> <ping> <pong> <epoch> <state> <slot ranges...>
        let nodes = cli(self.nodes[0].port, &["CLUSTER", "NODES"]);
        let owner_port = nodes
            .lines()
            .find(|line| {
                line.split_whitespace().skip(8).any(|range| match range.split_once('-') {
                    Some((a, b)) => {
                        a.parse::<u16>().is_ok_and(|a| a <= slot) && b.parse::<u16>().is_ok_and(|b| slot <= b)
                    }
                    None => range.parse::<u16>() == Ok(slot),
                })
            })
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|addr| addr.split(['@', ':']).nth(1))
            .and_then(|port| port.parse::<u16>().ok())
            .unwrap_or_else(|| panic!("no node owns slot {slot}:\n{nodes}"));
        self.nodes.iter().position(|n| n.port == owner_port).unwrap()
    }

    /// Kills node `i` and starts it again with its cluster config; waits for the cluster to heal.
    pub fn restart(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        node.stop();
        node.start_again();
        self.wait_healthy();
    }
}
