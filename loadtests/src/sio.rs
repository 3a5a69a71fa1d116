//! A minimal Socket.IO client (Engine.IO v4 over WebSocket only, default namespace), small
//! enough per connection to open tens of thousands from one process.
//!
//! Why not a full client: what a benchmark needs is the handshake with `auth`, acks, pings and
//! events; everything else (polling, reconnection policy, binary packets) would only cost
//! memory. Each connection is one task owning its socket; memory is the tungstenite read
//! buffer (1 KiB here, not tungstenite's 128 KiB default) plus the task.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::{
    WebSocketStream, client_async_with_config,
    tungstenite::{Message, client::IntoClientRequest, protocol::WebSocketConfig},
};

/// An open, authenticated Socket.IO connection.
pub struct Conn {
    ws: WebSocketStream<TcpStream>,
    next_ack: u64,
}

/// What a connection does with incoming events (`42[...]` packets, the text after `42`).
pub trait Handler {
    fn event(&mut self, packet: &str);
}

/// Ignores every event.
pub struct Ignore;

impl Handler for Ignore {
    fn event(&mut self, _packet: &str) {}
}

impl Conn {
    /// Connects from `source` (a loopback address, so that many sources multiply the ephemeral
    /// ports available) to the replica at `addr`, and authenticates with `token`.
    pub async fn connect(addr: SocketAddr, source: IpAddr, token: &str, timeout: Duration) -> anyhow::Result<Conn> {
        Self::connect_with_headers(addr, source, token, timeout, &[]).await
    }

    /// Like [`Conn::connect`], with `headers` added to the WebSocket upgrade request.
    pub async fn connect_with_headers(
        addr: SocketAddr,
        source: IpAddr,
        token: &str,
        timeout: Duration,
        headers: &[(&'static str, String)],
    ) -> anyhow::Result<Conn> {
        tokio::time::timeout(timeout, Self::connect_inner(addr, source, token, headers))
            .await
            .map_err(|_| anyhow::anyhow!("connect to {addr} timed out"))?
    }

    async fn connect_inner(
        addr: SocketAddr,
        source: IpAddr,
        token: &str,
        headers: &[(&'static str, String)],
    ) -> anyhow::Result<Conn> {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        socket.bind(SocketAddr::new(source, 0)).with_context(|| format!("binding {source}"))?;
        let stream = socket.connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let config = WebSocketConfig::default().read_buffer_size(1024).write_buffer_size(0);
        let mut request = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket").into_client_request()?;
        for (name, value) in headers {
            request.headers_mut().append(*name, value.parse()?);
        }
        let (ws, _) = client_async_with_config(request, stream, Some(config)).await.context("WebSocket handshake")?;
        let mut conn = Conn { ws, next_ack: 0 };
        let open = conn.next_text().await?;
        if !open.starts_with('0') {
            bail!("expected the Engine.IO open packet, got {open:?}");
        }
        conn.send(format!("40{}", serde_json::json!({ "token": token }))).await?;
        loop {
            let packet = conn.next_text().await?;
            if packet.starts_with("40") {
                return Ok(conn);
            }
            if let Some(err) = packet.strip_prefix("44") {
                bail!("connect_error: {err}");
            }
            conn.answer_ping(&packet).await?;
        }
    }

    /// Connects like [`Conn::connect`], then joins `channel` (with `since` when given); returns
    /// the connection and the join ack. Events replayed before the ack go to `handler`.
    pub async fn connect_and_join(
        addr: SocketAddr,
        source: IpAddr,
        token: &str,
        channel: &str,
        since: Option<serde_json::Value>,
        handler: &mut impl Handler,
    ) -> anyhow::Result<(Conn, serde_json::Value)> {
        let mut conn = Conn::connect(addr, source, token, Duration::from_secs(30)).await?;
        let mut join = serde_json::json!({ "channel": channel });
        if let Some(since) = since {
            join["since"] = since;
        }
        let ack = conn.call("join", &join, handler).await?;
        if ack["ok"] != true {
            bail!("join refused: {ack}");
        }
        Ok((conn, ack))
    }

    /// Emits `event` with one argument, asking for an ack it does not wait for.
    pub async fn emit_with_ack(&mut self, event: &str, arg: &serde_json::Value) -> anyhow::Result<()> {
        let id = self.next_ack;
        self.next_ack += 1;
        self.send(format!("42{id}{}", serde_json::json!([event, arg]))).await
    }

    /// `socket.disconnect()` of socket.io-client: a DISCONNECT packet, then the transport closes.
    pub async fn disconnect(mut self) {
        let _ = self.send("41".to_owned()).await;
        let _ = self.ws.close(None).await;
    }

    /// The transport closes without a DISCONNECT packet (a tab closing, a network drop).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Sends a raw Socket.IO packet.
    pub async fn send(&mut self, packet: String) -> anyhow::Result<()> {
        self.ws.send(Message::text(packet)).await.context("sending")
    }

    /// Emits `event` with one argument and waits for its ack; events arriving meanwhile (a
    /// recovery replay comes before the join ack) go to `handler`. Returns the ack's argument.
    pub async fn call(
        &mut self,
        event: &str,
        arg: &serde_json::Value,
        handler: &mut impl Handler,
    ) -> anyhow::Result<serde_json::Value> {
        let id = self.next_ack;
        self.next_ack += 1;
        self.send(format!("42{id}{}", serde_json::json!([event, arg]))).await?;
        let prefix = format!("43{id}");
        loop {
            let packet = self.next_text().await?;
            if let Some(rest) = packet.strip_prefix(&prefix) {
                let mut args: Vec<serde_json::Value> = serde_json::from_str(rest).context("ack payload")?;
                return Ok(if args.is_empty() { serde_json::Value::Null } else { args.swap_remove(0) });
            }
            self.dispatch(&packet, handler).await?;
        }
    }

    /// Receives until the connection closes (or `stop` resolves), answering pings, passing
    /// events to `handler` and sending what arrives on `outgoing`.
    pub async fn run(
        mut self,
        handler: &mut impl Handler,
        mut outgoing: Option<tokio::sync::mpsc::Receiver<String>>,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                message = self.ws.next() => match message {
                    Some(Ok(Message::Text(text))) => self.dispatch(text.as_str(), handler).await?,
                    Some(Ok(Message::Close(_))) | None => bail!("connection closed"),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.into()),
                },
                Some(packet) = async { match outgoing.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                    self.send(packet).await?;
                }
                () = &mut stop => {
                    let _ = self.ws.close(None).await;
                    return Ok(());
                }
            }
        }
    }

    /// Answers a ping, or passes an event on; other packets are ignored.
    async fn dispatch(&mut self, packet: &str, handler: &mut impl Handler) -> anyhow::Result<()> {
        if let Some(event) = packet.strip_prefix("42") {
            handler.event(event);
            Ok(())
        } else if packet.starts_with("41") {
            bail!("disconnected by the server")
        } else {
            self.answer_ping(packet).await
        }
    }

    async fn answer_ping(&mut self, packet: &str) -> anyhow::Result<()> {
        if packet == "2" {
            self.send("3".to_owned()).await?;
        }
        Ok(())
    }

    async fn next_text(&mut self) -> anyhow::Result<String> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(text))) => return Ok(text.as_str().to_owned()),
                Some(Ok(Message::Close(_))) | None => bail!("connection closed"),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }
}

/// The event name of a `42[...]` packet body, without parsing the rest.
pub fn event_name(packet: &str) -> Option<&str> {
    let rest = packet.strip_prefix("[\"")?;
    rest.find('"').map(|end| &rest[..end])
}

#[cfg(test)]
mod tests {
    use super::event_name;

    #[test]
    fn event_names() {
        assert_eq!(event_name(r#"["bench",{"s":1}]"#), Some("bench"));
        assert_eq!(event_name("[1]"), None);
    }
}
