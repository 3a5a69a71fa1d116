//! The publisher: validate, encode and publish envelopes to Redis.

use std::time::Duration;

use fred::{
    clients::Client,
    interfaces::{ClientLike, HashesInterface, LuaInterface, PubsubInterface},
    types::{
        Builder, Value,
        config::{Config, ReconnectPolicy},
        scripts::Script,
    },
};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::{
    room::{IdError, Room},
    wire::{
        self, DEFAULT_MAX_PAYLOAD, Dedupe, Envelope, EventNameError, HistoryPolicy, InvalidPrefix, Keys,
        PUBLISH_SCRIPT, TypingEnvelope, VERSION,
    },
};

/// Why a publish failed.
///
/// ```no_run
/// # async fn run(publisher: roomcast_publisher::Publisher) {
/// use roomcast_publisher::PublishError;
/// match publisher.project("acme", "p1").emit_with_id("task.updated", &42, "task-42-v7").await {
///     Ok(receipt) => println!("offset {:?}", receipt.offset),
///     // Unknown outcome: retrying with the same id cannot deliver it twice.
///     Err(PublishError::Redis(e)) if e.is_timeout() => { /* retry with "task-42-v7" */ }
///     Err(e) => eprintln!("not published: {e}"),
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// A tenant, user, project or channel id is not valid (see [`crate::validate_id`]).
    #[error("invalid id: {0}")]
    InvalidId(#[from] IdError),
    /// The event name is reserved or malformed.
    #[error(transparent)]
    InvalidEvent(#[from] EventNameError),
    /// A control instruction's field is invalid (reason, message, socket).
    #[error(transparent)]
    InvalidControl(#[from] wire::ControlError),
    /// The serialized payload is larger than the publisher's limit.
    #[error("payload is {size} bytes, over the {max}-byte limit")]
    PayloadTooLarge {
        /// Serialized size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The payload could not be serialized to JSON.
    #[error("payload does not serialize to JSON: {0}")]
    Serialize(#[from] serde_json::Error),
    /// The channel prefix is not usable.
    #[error(transparent)]
    InvalidPrefix(#[from] InvalidPrefix),
    /// A revocation's shape or ids are invalid.
    #[error(transparent)]
    InvalidRevocation(#[from] wire::RevocationError),
    /// The tenant already has the most revocations in force ([`Revoke::max_per_tenant`]).
    #[error("the tenant already has {0} revocations in force")]
    TooManyRevocations(u64),
    /// Redis refused the command, did not answer in time, or could not be reached.
    #[error("redis: {0}")]
    Redis(RedisError),
}

impl PublishError {
    fn redis(e: fred::error::Error) -> PublishError {
        PublishError::Redis(RedisError(e))
    }
}

/// A Redis failure. Opaque, so that this crate's API does not change with fred's; the fred
/// error is its [`std::error::Error::source`].
#[derive(Debug)]
pub struct RedisError(fred::error::Error);

impl RedisError {
    /// Redis did not answer in time, or the connection broke while the command was in flight:
    /// the publish may or may not have happened. Retry with the same id
    /// ([`Target::emit_with_id`]) to be sure it is delivered once.
    pub fn is_timeout(&self) -> bool {
        use fred::error::ErrorKind;
        matches!(self.0.kind(), ErrorKind::Timeout | ErrorKind::IO | ErrorKind::Canceled)
    }

    /// Redis answered with an error (e.g. `OOM`, `NOAUTH`, a script error): nothing was
    /// published.
    pub fn is_refused(&self) -> bool {
        use fred::error::ErrorKind;
        !self.is_timeout() && !matches!(self.0.kind(), ErrorKind::Config | ErrorKind::Url | ErrorKind::Tls)
    }
}

impl std::fmt::Display for RedisError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.details())
    }
}

impl std::error::Error for RedisError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// What a successful publish reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    /// The event id clients see in the meta argument; `None` for typing indicators.
    pub id: Option<String>,
    /// The room published to.
    pub room: String,
    /// Gateway replicas subscribed to the room when it was published (the count Redis returns).
    /// Zero means no replica currently has a member of the room.
    pub replicas: u64,
    /// The event's offset in the room's history; `None` without history and for typing.
    pub offset: Option<u64>,
    /// The room history's epoch; `None` without history and for typing.
    pub epoch: Option<String>,
    /// This event id was already published to the room within the dedupe window
    /// ([`Target::emit_with_id`]): nothing was published now, and the fields above are the
    /// first publish's.
    pub duplicate: bool,
}

/// How [`Target::disconnect`] ends the sockets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disconnect {
    /// Only this socket (its Socket.IO id) of the room.
    pub socket: Option<String>,
    /// The application's reason code, passed to the client (1-64 of `a-z 0-9 _ . : -`).
    pub reason: Option<String>,
    /// For people, passed to the client (at most 256 bytes).
    pub message: Option<String>,
    /// Whether the client may reconnect on its own.
    pub reconnect: bool,
}

/// What a control instruction reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlReceipt {
    /// Sockets reached, all replicas together.
    pub sockets: u64,
    /// Replicas that acted on it and answered in time (fewer than `of`: retry, a disconnect is
    /// idempotent).
    pub replicas: u64,
    /// Replicas it was delivered to (those with a member of the room).
    pub of: u64,
}

/// How [`Publisher::revoke`] records a revocation: use the gateways' settings.
#[derive(Debug, Clone)]
pub struct Revoke {
    /// The gateways' `ROOMCAST_MAX_TOKEN_LIFETIME` plus `ROOMCAST_JWT_LEEWAY` (default 24 h 5 s):
    /// it is kept this long plus a minute. Shorter, and a token could outlive it.
    pub keep_for: Duration,
    /// The gateways' `ROOMCAST_MAX_REVOCATIONS_PER_TENANT` (default 10,000).
    pub max_per_tenant: u64,
    /// How long to wait for the replicas with sockets of the room to acknowledge.
    pub wait: Duration,
}

impl Default for Revoke {
    fn default() -> Self {
        Revoke { keep_for: Duration::from_secs(24 * 3600 + 5), max_per_tenant: 10_000, wait: Duration::from_secs(2) }
    }
}

/// How long an event id given to [`Target::emit_with_id`] is remembered unless
/// [`Publisher::with_dedupe_window`] says otherwise.
pub const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(300);

/// Publishes events and typing indicators to Roomcast rooms. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    client: Client,
    keys: Keys,
    max_payload: usize,
    dedupe_window: Duration,
    history: Option<HistoryPolicy>,
    script: Script,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("keys", &self.keys)
            .field("max_payload", &self.max_payload)
            .field("history", &self.history)
            .finish_non_exhaustive()
    }
}

/// Timeout applied to each publish when the publisher creates its own client.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

impl Publisher {
    /// Connects to Redis at `redis_url`: `redis://host:port`, `rediss://` (TLS),
    /// `redis-cluster://host:port?node=host2:port2` or `redis-sentinel://…`.
    ///
    /// The client reconnects with exponential backoff; each publish times out after
    /// [`DEFAULT_COMMAND_TIMEOUT`] rather than waiting for Redis forever.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), roomcast_publisher::PublishError> {
    /// let publisher = roomcast_publisher::Publisher::connect("redis://127.0.0.1:6379").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(redis_url: &str) -> Result<Publisher, PublishError> {
        Self::from_config(Config::from_url(redis_url).map_err(PublishError::redis)?).await
    }

    /// Connects with a fred [`Config`], keeping Roomcast's reconnect policy and timeout.
    ///
    /// fred interop: `Config` is the re-exported [`crate::fred`]'s (see the crate docs on
    /// versions).
    pub async fn from_config(config: Config) -> Result<Publisher, PublishError> {
        let client = Builder::from_config(config)
            .with_performance_config(|p| p.default_command_timeout = DEFAULT_COMMAND_TIMEOUT)
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .build()
            .map_err(PublishError::redis)?;
        client.init().await.map_err(PublishError::redis)?;
        Ok(Self::from_client(client))
    }

    /// Uses a fred client the application already configured and connected (fred interop: see
    /// the crate docs on versions).
    pub fn from_client(client: Client) -> Publisher {
        Publisher {
            client,
            keys: Keys::default(),
            max_payload: DEFAULT_MAX_PAYLOAD,
            dedupe_window: DEFAULT_DEDUPE_WINDOW,
            history: Some(HistoryPolicy::default()),
            script: Script::from_lua(PUBLISH_SCRIPT),
        }
    }

    /// Keeps `policy` worth of history per room (default: 100 events, 5 minutes), so clients and
    /// replicas that missed events can recover them. Use the gateways' `ROOMCAST_HISTORY_*` values.
    pub fn with_history(mut self, policy: HistoryPolicy) -> Publisher {
        self.history = Some(policy);
        self
    }

    /// Publishes without history: no offsets, nothing to recover; one `PUBLISH` per event.
    pub fn without_history(mut self) -> Publisher {
        self.history = None;
        self
    }

    /// Uses channel prefix `prefix` instead of `roomcast` (it must match the gateways' `ROOMCAST_REDIS_PREFIX`).
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Result<Publisher, PublishError> {
        self.keys = Keys::new(prefix)?;
        Ok(self)
    }

    /// How long an id given to [`Target::emit_with_id`] is remembered (default 5 minutes):
    /// longer than any retry of a publish.
    pub fn with_dedupe_window(mut self, window: Duration) -> Publisher {
        self.dedupe_window = window;
        self
    }

    /// Refuses payloads whose JSON is larger than `bytes` (default 64 KiB).
    pub fn with_max_payload(mut self, bytes: usize) -> Publisher {
        self.max_payload = bytes;
        self
    }

    /// The underlying fred client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Every connection of tenant `t`.
    pub fn tenant(&self, t: &str) -> Target<'_> {
        Target { publisher: self, room: Room::tenant(t), except: None }
    }

    /// Members of project `p` in tenant `t`.
    pub fn project(&self, t: &str, p: &str) -> Target<'_> {
        Target { publisher: self, room: Room::project(t, p), except: None }
    }

    /// Members of channel `c` in tenant `t`.
    pub fn channel(&self, t: &str, c: &str) -> Target<'_> {
        Target { publisher: self, room: Room::channel(t, c), except: None }
    }

    /// Every connection of user `u` in tenant `t`.
    pub fn user(&self, t: &str, u: &str) -> Target<'_> {
        Target { publisher: self, room: Room::user(t, u), except: None }
    }

    /// Shows (`typing: true`) or clears a typing indicator for `user` (a user or bot id) in
    /// channel `c`. Members of the channel see `typing` `{ channel, userId, typing, ttlMs }`.
    ///
    /// ```no_run
    /// # async fn run(publisher: roomcast_publisher::Publisher) -> Result<(), roomcast_publisher::PublishError> {
    /// publisher.typing("acme", "support", "assistant-bot", true).await?;
    /// // ... the bot answers ...
    /// publisher.typing("acme", "support", "assistant-bot", false).await?;
    /// # Ok(()) }
    /// ```
    pub async fn typing(&self, t: &str, c: &str, user: &str, typing: bool) -> Result<Receipt, PublishError> {
        let message = self.typing_message(t, c, user, typing)?;
        self.send(message, Run::Reload(&self.script)).await
    }

    /// A batch of publishes sent in one round trip.
    ///
    /// ```no_run
    /// # async fn run(publisher: roomcast_publisher::Publisher) -> Result<(), roomcast_publisher::PublishError> {
    /// let mut batch = publisher.batch();
    /// for user in ["ada", "bob"] {
    ///     batch.emit(&publisher.user("acme", user), "notification", &serde_json::json!({ "text": "deploy at 22:00" }))?;
    /// }
    /// let receipts = batch.send().await?;
    /// assert_eq!(receipts.len(), 2);
    /// # Ok(()) }
    /// ```
    pub fn batch(&self) -> Batch<'_> {
        Batch { publisher: self, messages: Vec::new() }
    }

    fn event_message<T: Serialize + ?Sized>(
        &self,
        room: &Room,
        event: &str,
        payload: &T,
        chosen_id: Option<String>,
        except: Option<String>,
    ) -> Result<Message, PublishError> {
        wire::validate_event_name(event)?;
        let json = serde_json::to_string(payload)?;
        if json.len() > self.max_payload {
            return Err(PublishError::PayloadTooLarge { size: json.len(), max: self.max_payload });
        }
        let data = RawValue::from_string(json)?;
        // A chosen id is an idempotency key; a generated one is unique anyway.
        let dedupe = chosen_id.as_ref().map(|_| self.dedupe_window);
        let id = chosen_id.unwrap_or_else(wire::new_event_id);
        let mut envelope = wire::event_envelope(room, event, data, id.clone(), wire::now_ms());
        if let wire::Envelope::Event(e) = &mut envelope {
            e.except = except;
        }
        Ok(Message {
            room: room.to_string(),
            id: Some(id),
            body: serde_json::to_string(&envelope)?,
            history: self.history,
            dedupe,
        })
    }

    fn typing_message(&self, t: &str, c: &str, user: &str, typing: bool) -> Result<Message, PublishError> {
        let room = Room::channel(t, c)?;
        crate::validate_id(user)?;
        let envelope = Envelope::Typing(TypingEnvelope {
            v: VERSION,
            room: room.to_string(),
            user: user.to_owned(),
            typing,
            ts: wire::now_ms(),
        });
        // Typing indicators are ephemeral: never in history.
        Ok(Message {
            room: room.to_string(),
            id: None,
            body: serde_json::to_string(&envelope)?,
            history: None,
            dedupe: None,
        })
    }

    /// Publishes one encoded message (see [`send_encoded`]).
    async fn send(&self, message: Message, run: Run<'_>) -> Result<Receipt, PublishError> {
        let dedupe = match (&message.id, message.dedupe) {
            (Some(id), Some(window)) => Some(Dedupe { id, window }),
            _ => None,
        };
        let sent =
            send_with(&self.client, run, &self.keys, &message.room, message.body.clone(), message.history, dedupe)
                .await
                .map_err(PublishError::redis)?;
        Ok(Receipt {
            id: message.id,
            room: message.room,
            replicas: sent.replicas,
            offset: sent.offset,
            epoch: sent.epoch,
            duplicate: sent.duplicate,
        })
    }
}

#[derive(Debug, Clone)]
struct Message {
    room: String,
    id: Option<String>,
    body: String,
    /// Published through the history script with this policy, else with a plain (S)PUBLISH.
    history: Option<HistoryPolicy>,
    /// Published once per `id` within this window (the caller chose the id).
    dedupe: Option<Duration>,
}

/// What one publish did: how many replicas received it and, with history, its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// Subscribers that received it (replicas with members in the room).
    pub replicas: u64,
    /// Its offset in the room (published with history).
    pub offset: Option<u64>,
    /// The room history's epoch (published with history).
    pub epoch: Option<String>,
    /// The event id was already published within the dedupe window: nothing was published now,
    /// and the fields above are the first publish's.
    pub duplicate: bool,
}

/// Publishes `body`, an encoded [`Envelope`] for `room`: through [`wire::PUBLISH_SCRIPT`] when
/// `history` is given (the script assigns offset and epoch, stores the event and publishes it),
/// else with `PUBLISH`, or `SPUBLISH` when `client` is a cluster client.
///
/// The one publish path of Roomcast: [`Publisher`] and the gateway (for `POST /v1/publish` and
/// what replicas send each other) both publish through it. `script` is
/// `Script::from_lua(PUBLISH_SCRIPT)`; it is loaded on first use. With `dedupe` (and history),
/// an event id already published to the room within the window is not published again.
pub async fn send_encoded(
    client: &Client,
    script: &Script,
    keys: &Keys,
    room: &str,
    body: String,
    history: Option<HistoryPolicy>,
    dedupe: Option<Dedupe<'_>>,
) -> Result<Sent, fred::error::Error> {
    send_with(client, Run::Reload(script), keys, room, body, history, dedupe).await
}

/// How [`send_with`] runs the history script.
#[derive(Clone, Copy)]
enum Run<'a> {
    /// `EVALSHA`, loading the script on `NOSCRIPT` and trying again.
    Reload(&'a Script),
    /// Plain `EVALSHA` of a script known to be loaded: a batch's messages are all written before
    /// any reply arrives, and retrying one after `NOSCRIPT` would publish it after later ones.
    Loaded(&'a Script),
}

async fn send_with(
    client: &Client,
    run: Run<'_>,
    keys: &Keys,
    room: &str,
    body: String,
    history: Option<HistoryPolicy>,
    dedupe: Option<Dedupe<'_>>,
) -> Result<Sent, fred::error::Error> {
    let command = if client.is_clustered() { "SPUBLISH" } else { "PUBLISH" };
    if let Some(policy) = history {
        let (keys, args) = wire::publish_script_call(keys, room, command, body, policy, dedupe);
        let reply: Value = match run {
            Run::Reload(script) => script.evalsha_with_reload(client, keys, args).await?,
            Run::Loaded(script) => client.evalsha(script.sha1().clone(), keys, args).await?,
        };
        let mut parts = match reply {
            Value::Array(parts) => parts.into_iter(),
            _ => Vec::new().into_iter(),
        };
        let replicas = parts.next().and_then(|v| v.as_u64()).unwrap_or(0);
        let offset = parts.next().and_then(|v| v.as_u64());
        let epoch = parts.next().and_then(|v| v.as_string());
        let duplicate = parts.next().and_then(|v| v.as_u64()) == Some(1);
        return Ok(Sent { replicas, offset, epoch, duplicate });
    }
    let channel = keys.channel(room);
    let replicas: u64 = if client.is_clustered() {
        client.spublish(channel, body).await?
    } else {
        client.publish(channel, body).await?
    };
    Ok(Sent { replicas, offset: None, epoch: None, duplicate: false })
}

impl Publisher {
    /// Revokes tokens on every replica: `revocation` names a token of a tenant by `jti`, or every
    /// token of a user issued before a time. Recorded in the list the replicas read (each refuses
    /// such tokens within a second, at connect and at `auth:refresh`, and disconnects the
    /// sockets holding one with `token_revoked`), then sent to the replicas holding sockets of
    /// its room, which act at once; the receipt counts those. PROTOCOL.md, "Revocations".
    ///
    /// ```no_run
    /// # async fn run(publisher: roomcast_publisher::Publisher) -> Result<(), roomcast_publisher::PublishError> {
    /// use roomcast_publisher::{Revoke, wire::Revocation};
    /// let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    /// // Sign ada out everywhere: every token issued before now.
    /// let everywhere = Revocation { tenant: "acme".into(), jti: None, user: Some("ada".into()), before: Some(now) };
    /// let receipt = publisher.revoke(&everywhere, &Revoke::default()).await?;
    /// println!("{} socket(s) disconnected", receipt.sockets);
    /// # Ok(()) }
    /// ```
    pub async fn revoke(&self, revocation: &wire::Revocation, how: &Revoke) -> Result<ControlReceipt, PublishError> {
        let now = wire::now_ms();
        revocation.validate(now)?;
        let until = wire::revocation_until(now, how.keep_for);
        wire::Revocation::validate_until(until, now)?;
        // Built before anything is written: whatever fails, fails first.
        let control = wire::ControlEnvelope::revoke(revocation, until)?;
        let (keys, args) = wire::revoke_script_call(&self.keys, revocation, until, how.max_per_tenant.max(1));
        let script = Script::from_lua(wire::REVOKE_SCRIPT);
        let recorded: u64 = script.evalsha_with_reload(&self.client, keys, args).await.map_err(PublishError::redis)?;
        if recorded != 1 {
            return Err(PublishError::TooManyRevocations(how.max_per_tenant));
        }
        self.send_control(control, how.wait).await
    }

    /// Publishes `control` on its room's channel and waits up to `wait` for the replicas that
    /// received it to acknowledge (PROTOCOL.md, "Control").
    async fn send_control(
        &self,
        control: wire::ControlEnvelope,
        wait: Duration,
    ) -> Result<ControlReceipt, PublishError> {
        let (client, keys) = (&self.client, &self.keys);
        let room = control.room.clone();
        let acks = keys.control_acks(&room, &control.id);
        let body = serde_json::to_string(&Envelope::Control(control))?;
        let of: u64 = if client.is_clustered() {
            client.spublish(keys.channel(&room), body).await
        } else {
            client.publish(keys.channel(&room), body).await
        }
        .map_err(PublishError::redis)?;
        let mut receipt = ControlReceipt { sockets: 0, replicas: 0, of };
        let deadline = tokio::time::Instant::now() + wait;
        // Each replica answers in its own field (its id → sockets reached). Sent already: a failed
        // read of the answers ends the wait with what was counted, not an error.
        while receipt.replicas < of && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let Ok(answers) = client.hgetall::<std::collections::HashMap<String, u64>, _>(&acks).await else {
                break;
            };
            receipt.replicas = answers.len() as u64;
            receipt.sockets = answers.values().sum();
        }
        Ok(receipt)
    }
}

/// A room to publish to; obtained from [`Publisher::tenant`], [`Publisher::project`],
/// [`Publisher::channel`] or [`Publisher::user`]. Invalid ids surface when publishing.
#[derive(Debug)]
pub struct Target<'a> {
    publisher: &'a Publisher,
    room: Result<Room, IdError>,
    except: Option<String>,
}

impl Target<'_> {
    /// Skips Socket.IO socket `socket_id` in the live delivery of what [`Target::emit`] sends
    /// (the socket.io emitter's `except`): the client whose action caused the event, named by
    /// an RPC's `socket`. A replay from history still includes the event.
    pub fn except(mut self, socket_id: &str) -> Self {
        self.except = Some(socket_id.to_owned());
        self
    }

    /// The room, or why its ids are invalid.
    pub fn room(&self) -> Result<&Room, IdError> {
        self.room.as_ref().map_err(Clone::clone)
    }

    /// Disconnects the room's sockets on every replica (all of a tenant's for
    /// [`Publisher::tenant`], all of a user's for [`Publisher::user`]), and waits up to `wait`
    /// for the replicas to say how many sockets they reached (PROTOCOL.md, "Control").
    ///
    /// ```no_run
    /// # async fn run(publisher: roomcast_publisher::Publisher) -> Result<(), roomcast_publisher::PublishError> {
    /// use roomcast_publisher::Disconnect;
    /// let kick = Disconnect { reason: Some("removed_from_workspace".into()), ..Default::default() };
    /// let receipt = publisher.user("acme", "ada").disconnect(&kick, std::time::Duration::from_secs(2)).await?;
    /// println!("{} socket(s) on {} of {} replica(s)", receipt.sockets, receipt.replicas, receipt.of);
    /// # Ok(()) }
    /// ```
    pub async fn disconnect(&self, how: &Disconnect, wait: Duration) -> Result<ControlReceipt, PublishError> {
        let control = wire::ControlEnvelope {
            socket: how.socket.clone(),
            reason: how.reason.clone(),
            message: how.message.clone(),
            reconnect: how.reconnect,
            ..wire::ControlEnvelope::new(self.room()?, wire::ControlOp::Disconnect)
        };
        control.validate()?;
        self.publisher.send_control(control, wait).await
    }

    /// Makes the room's sockets (a tenant's, a user's, a room's members) join `room`, a project
    /// or channel room of the same tenant, on every replica, whatever their tokens grant; waits
    /// up to `wait` for the replicas' acknowledgements. Each socket receives `roomcast:joined`.
    ///
    /// ```no_run
    /// # async fn run(publisher: roomcast_publisher::Publisher) -> Result<(), roomcast_publisher::PublishError> {
    /// use roomcast_publisher::Room;
    /// let project = Room::project("acme", "apollo")?;
    /// let receipt = publisher.user("acme", "ada").join(&project, std::time::Duration::from_secs(2)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn join(&self, room: &Room, wait: Duration) -> Result<ControlReceipt, PublishError> {
        self.move_to(wire::ControlOp::Join, room, wait).await
    }

    /// Makes the room's sockets leave `room` on every replica, even one their tokens grant; for
    /// each socket's life it may not join it again by itself. Each socket that was in it
    /// receives `roomcast:left`.
    pub async fn leave(&self, room: &Room, wait: Duration) -> Result<ControlReceipt, PublishError> {
        self.move_to(wire::ControlOp::Leave, room, wait).await
    }

    async fn move_to(
        &self,
        op: wire::ControlOp,
        target: &Room,
        wait: Duration,
    ) -> Result<ControlReceipt, PublishError> {
        let control =
            wire::ControlEnvelope { target: Some(target.to_string()), ..wire::ControlEnvelope::new(self.room()?, op) };
        control.validate()?;
        self.publisher.send_control(control, wait).await
    }

    /// Publishes `event` with `payload` (any `Serialize` value) to the room's members.
    ///
    /// ```no_run
    /// # async fn run(publisher: roomcast_publisher::Publisher) -> Result<(), roomcast_publisher::PublishError> {
    /// let receipt = publisher.channel("acme", "general").emit("message:new", &serde_json::json!({ "text": "hi" })).await?;
    /// println!("{} replica(s) had members; offset {:?}", receipt.replicas, receipt.offset);
    /// # Ok(()) }
    /// ```
    pub async fn emit<T: Serialize + ?Sized>(&self, event: &str, payload: &T) -> Result<Receipt, PublishError> {
        let room = self.room()?;
        let message = self.publisher.event_message(room, event, payload, None, self.except.clone())?;
        self.publisher.send(message, Run::Reload(&self.publisher.script)).await
    }

    /// Like [`Target::emit`], with the event id chosen by the caller (an id, see
    /// [`crate::validate_id`]) and published at most once per id and room within the dedupe
    /// window: retrying after an error whose outcome is unknown (a timeout) cannot deliver the
    /// event twice. A retry of a publish that went through gets the first receipt, marked
    /// `duplicate`. Needs history (the default).
    ///
    /// ```no_run
    /// # async fn run(publisher: roomcast_publisher::Publisher) -> Result<(), roomcast_publisher::PublishError> {
    /// // The id names the fact, so a retry after a timeout is delivered once.
    /// let target = publisher.user("acme", "ada");
    /// let receipt = target.emit_with_id("order.shipped", &serde_json::json!({ "order": 42 }), "order-42-shipped").await?;
    /// assert_eq!(receipt.id.as_deref(), Some("order-42-shipped"));
    /// # Ok(()) }
    /// ```
    pub async fn emit_with_id<T: Serialize + ?Sized>(
        &self,
        event: &str,
        payload: &T,
        id: &str,
    ) -> Result<Receipt, PublishError> {
        crate::validate_id(id)?;
        let room = self.room()?;
        let message = self.publisher.event_message(room, event, payload, Some(id.to_owned()), self.except.clone())?;
        self.publisher.send(message, Run::Reload(&self.publisher.script)).await
    }
}

/// Publishes collected with [`Batch::emit`] and [`Batch::typing`], sent in one round trip.
///
/// Everything is validated as it is added, so [`Batch::send`] only fails on Redis errors; then
/// the events before the failing one may have been published.
#[derive(Debug)]
pub struct Batch<'a> {
    publisher: &'a Publisher,
    messages: Vec<Message>,
}

impl Batch<'_> {
    /// Adds `event` with `payload` for `target`'s room.
    pub fn emit<T: Serialize + ?Sized>(
        &mut self,
        target: &Target<'_>,
        event: &str,
        payload: &T,
    ) -> Result<&mut Self, PublishError> {
        let message = self.publisher.event_message(target.room()?, event, payload, None, target.except.clone())?;
        self.messages.push(message);
        Ok(self)
    }

    /// Adds `event` with `payload` for `target`'s room under the caller's event id, published
    /// at most once per id and room within the dedupe window (see [`Target::emit_with_id`]):
    /// a batch retried after an error whose outcome is unknown delivers each event once, and
    /// its receipts say which were `duplicate`.
    pub fn emit_with_id<T: Serialize + ?Sized>(
        &mut self,
        target: &Target<'_>,
        event: &str,
        payload: &T,
        id: &str,
    ) -> Result<&mut Self, PublishError> {
        crate::validate_id(id)?;
        let message =
            self.publisher.event_message(target.room()?, event, payload, Some(id.to_owned()), target.except.clone())?;
        self.messages.push(message);
        Ok(self)
    }

    /// Adds a typing indicator (see [`Publisher::typing`]).
    pub fn typing(&mut self, t: &str, c: &str, user: &str, typing: bool) -> Result<&mut Self, PublishError> {
        let message = self.publisher.typing_message(t, c, user, typing)?;
        self.messages.push(message);
        Ok(self)
    }

    /// Number of queued publishes.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Sends every queued publish in one round trip; receipts come back in the order added.
    pub async fn send(self) -> Result<Vec<Receipt>, PublishError> {
        if self.messages.is_empty() {
            return Ok(Vec::new());
        }
        if self.messages.iter().any(|m| m.history.is_some()) {
            // Loaded once up front, so the batch's EVALSHAs need no fallback.
            self.publisher.script.load(&self.publisher.client).await.map_err(PublishError::redis)?;
        }
        // All in flight at once on the connection, written in the order added (fred does not
        // wait for a reply before writing the next command), so one round trip for the batch.
        let sends = self.messages.into_iter().map(|m| self.publisher.send(m, Run::Loaded(&self.publisher.script)));
        futures_util::future::join_all(sends).await.into_iter().collect()
    }
}
