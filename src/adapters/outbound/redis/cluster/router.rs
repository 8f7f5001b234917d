//! Sends commands, each bound to one hash slot, to the masters that own their slots: one
//! pipeline per master, all masters at once, following `MOVED` and `ASK`, refreshing the slot
//! map (`CLUSTER SLOTS`) and retrying until the command timeout.
//!
//! The `redis` crate's cluster connection retries a pipeline whole on the node a `MOVED`
//! names, so a pipeline whose slots a resharding or a failover split over two masters would
//! bounce between them; and it refuses to route a pipeline that spans slots. Here each command
//! is answered, redirected or retried on its own.

use super::super::super::redact::{redact_url, scrub, url_secrets};
use super::slots::SLOTS;
use crate::ports::PortError;
use bb8_redis::redis::aio::MultiplexedConnection;
use bb8_redis::redis::{
    self, AsyncConnectionConfig, Cmd, ConnectionAddr, ConnectionInfo, IntoConnectionInfo,
    RedisError, Value,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use tokio::sync::OnceCell;
use tokio::time::Instant;

/// A master, as `host:port`.
type Addr = String;

/// A command for one slot. `eval` replaces `cmd` once a node answers `NOSCRIPT`.
pub(super) struct SlotCmd {
    pub slot: u16,
    pub cmd: Cmd,
    pub eval: Option<Cmd>,
}

/// Which master owns each slot, as the last `CLUSTER SLOTS` said.
struct Topology {
    /// Index into `masters` per slot; `None` while a slot has no master.
    owner: Vec<Option<u16>>,
    masters: Vec<Addr>,
    /// Counts refreshes, so callers that saw the same stale map refresh it once.
    generation: u64,
}

pub(super) struct Router {
    seeds: Vec<ConnectionInfo>,
    connection: AsyncConnectionConfig,
    connect_timeout: Duration,
    command_timeout: Duration,
    topology: RwLock<Arc<Topology>>,
    refreshing: tokio::sync::Mutex<()>,
    conns: Mutex<HashMap<Addr, Arc<OnceCell<MultiplexedConnection>>>>,
    shown: String,
    secrets: Vec<String>,
}

/// Where one round left a command.
enum Next {
    Done(Value),
    /// Send again after the slot map is refreshed (MOVED, a node down, a slot without master).
    Refresh,
    /// Send again to this node, after `ASKING`.
    Ask(Addr),
    /// Send again after a short wait (TRYAGAIN, LOADING, a master not yet elected).
    Wait,
    /// Send again now (`NOSCRIPT`: `eval` replaced `cmd`).
    Now,
}

impl Router {
    /// Parses the seed URLs without touching the network.
    ///
    /// # Errors
    /// `Failed` when there is no seed or one cannot be parsed; never with a password in it.
    pub fn new(
        urls: &[String],
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Self, PortError> {
        let shown = urls
            .iter()
            .map(|u| redact_url(u))
            .collect::<Vec<_>>()
            .join(",");
        let secrets: Vec<String> = urls.iter().flat_map(|u| url_secrets(u)).collect();
        let seeds = urls
            .iter()
            .map(|u| {
                u.as_str().into_connection_info().map_err(|e| {
                    PortError::Failed(scrub(
                        &format!("bad Redis Cluster URL {}: {e}", redact_url(u)),
                        &secrets,
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if seeds.is_empty() {
            return Err(PortError::Failed("no Redis Cluster seed URL".into()));
        }
        Ok(Self {
            seeds,
            // The driver's own defaults (1 s to connect, 0.5 s per reply) would cut the
            // configured timeouts short; each call is bounded by `command_timeout` anyway.
            connection: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(connect_timeout))
                .set_response_timeout(Some(command_timeout)),
            connect_timeout,
            command_timeout,
            topology: RwLock::new(Arc::new(Topology {
                owner: vec![None; usize::from(SLOTS)],
                masters: Vec::new(),
                generation: 0,
            })),
            refreshing: tokio::sync::Mutex::new(()),
            conns: Mutex::new(HashMap::new()),
            shown,
            secrets,
        })
    }

    /// The seed URLs without passwords.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    fn current(&self) -> Arc<Topology> {
        Arc::clone(&self.topology.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Every master's address, refreshing the slot map first if it is still empty or `fresh`
    /// is asked for.
    pub async fn masters(&self, fresh: bool) -> Result<Vec<Addr>, PortError> {
        let deadline = Instant::now() + self.command_timeout;
        let mut topo = self.current();
        if fresh || topo.masters.is_empty() {
            self.refresh(topo.generation, deadline)
                .await
                .map_err(|e| self.unavailable("slot map", &e))?;
            topo = self.current();
        }
        Ok(topo.masters.clone())
    }

    /// `PING` on `node`, for readiness.
    pub async fn ping(&self, node: &str) -> Result<(), PortError> {
        let deadline = Instant::now() + self.command_timeout;
        let mut conn = self
            .conn(node, deadline)
            .await
            .map_err(|e| self.unavailable("ping", &e))?;
        let left = deadline.saturating_duration_since(Instant::now());
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(left, ping).await {
            Ok(Ok(pong)) if pong == "PONG" => Ok(()),
            Ok(Ok(other)) => Err(PortError::Failed(format!(
                "{node} answered PING with {other:?}"
            ))),
            Ok(Err(e)) => {
                self.forget(node);
                Err(self.unavailable("ping", &format!("{node}: {e}")))
            }
            Err(_) => Err(self.unavailable("ping", &format!("{node}: no answer in time"))),
        }
    }

    /// Runs every command on its slot's master: `Ok(v)[i]` answers `cmds[i]`. When some
    /// commands could not be answered before the command timeout, `Err` carries what the
    /// others answered (`None` for the unanswered) and the reason.
    pub async fn run(
        &self,
        what: &str,
        mut cmds: Vec<SlotCmd>,
    ) -> Result<Vec<Value>, (Vec<Option<Value>>, PortError)> {
        let deadline = Instant::now() + self.command_timeout;
        let mut answers: Vec<Option<Value>> = vec![None; cmds.len()];
        let mut asks: HashMap<usize, Addr> = HashMap::new();
        let mut pause = Duration::from_millis(20);
        loop {
            let topo = self.current();
            if topo.masters.is_empty() {
                if let Err(e) = self.refresh(topo.generation, deadline).await {
                    return Err(self.give_up(what, answers, &e));
                }
                continue;
            }
            let (next, last_error) = self.round(&topo, &cmds, &answers, &asks, deadline).await;
            let (mut refresh, mut wait) = (false, false);
            asks.clear();
            for (i, n) in next {
                match n {
                    Next::Done(v) => answers[i] = Some(v),
                    Next::Refresh => refresh = true,
                    Next::Ask(addr) => drop(asks.insert(i, addr)),
                    Next::Wait => wait = true,
                    Next::Now => {
                        if let Some(eval) = cmds[i].eval.take() {
                            cmds[i].cmd = eval;
                        }
                    }
                }
            }
            if let Some(Err(e)) = last_error.as_ref().map(|e| e.as_failed()) {
                return Err((answers, e));
            }
            if answers.iter().all(Option::is_some) {
                return Ok(answers.into_iter().flatten().collect());
            }
            if Instant::now() >= deadline {
                let cause = last_error.map_or_else(|| "no answer".to_owned(), |e| e.to_string());
                return Err(self.give_up(what, answers, &cause));
            }
            if wait || refresh {
                // A failover takes the cluster's node timeout and an election: keep asking,
                // a little less often each time, until the command timeout.
                tokio::time::sleep(pause.min(deadline - Instant::now())).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            if refresh {
                // A refresh that fails leaves the old map; the next round says why.
                let _ = self.refresh(topo.generation, deadline).await;
            }
        }
    }

    fn give_up(
        &self,
        what: &str,
        answers: Vec<Option<Value>>,
        cause: &dyn std::fmt::Display,
    ) -> (Vec<Option<Value>>, PortError) {
        (answers, self.unavailable(what, cause))
    }

    fn unavailable(&self, what: &str, cause: &dyn std::fmt::Display) -> PortError {
        PortError::Unavailable(scrub(
            &format!("redis cluster {what} at {}: {cause}", self.shown),
            &self.secrets,
        ))
    }

    /// One pipeline per master for the commands still unanswered, all at once.
    async fn round(
        &self,
        topo: &Topology,
        cmds: &[SlotCmd],
        answers: &[Option<Value>],
        asks: &HashMap<usize, Addr>,
        deadline: Instant,
    ) -> (Vec<(usize, Next)>, Option<RoundError>) {
        let mut by_node: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut next = Vec::new();
        for (i, c) in cmds
            .iter()
            .enumerate()
            .filter(|(i, _)| answers[*i].is_none())
        {
            let node = asks.get(&i).map(String::as_str).or_else(|| {
                topo.owner[usize::from(c.slot)].map(|m| topo.masters[usize::from(m)].as_str())
            });
            match node {
                Some(node) => by_node.entry(node).or_default().push(i),
                None => next.push((i, Next::Refresh)),
            }
        }
        let sends = by_node.into_iter().map(|(node, idx)| async move {
            let asking: Vec<bool> = idx.iter().map(|i| asks.contains_key(i)).collect();
            let batch: Vec<&Cmd> = idx.iter().map(|&i| &cmds[i].cmd).collect();
            let got = self.send(node, &batch, &asking, deadline).await;
            (idx, got)
        });
        let mut last_error = None;
        for (idx, got) in futures_util::future::join_all(sends).await {
            match got {
                Ok(values) => {
                    for (i, v) in idx.into_iter().zip(values) {
                        match classify(v) {
                            Ok(n) => next.push((i, n)),
                            Err(e) => last_error = Some(e),
                        }
                    }
                }
                Err(e) => {
                    next.extend(idx.into_iter().map(|i| (i, Next::Refresh)));
                    last_error = Some(e);
                }
            }
        }
        (next, last_error)
    }

    /// One pipeline on `node`: its answers, one per command (`ASKING` answers left out).
    async fn send(
        &self,
        node: &str,
        cmds: &[&Cmd],
        asking: &[bool],
        deadline: Instant,
    ) -> Result<Vec<Value>, RoundError> {
        let mut conn = self.conn(node, deadline).await?;
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for (cmd, &ask) in cmds.iter().zip(asking) {
            if ask {
                pipe.cmd("ASKING").ignore();
            }
            pipe.add_command((*cmd).clone());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, pipe.query_async::<Vec<Value>>(&mut conn)).await {
            Ok(Ok(values)) if values.len() == cmds.len() => Ok(values),
            Ok(Ok(values)) => Err(RoundError::Failed(format!(
                "{node} answered {} results for {} commands",
                values.len(),
                cmds.len()
            ))),
            Ok(Err(e)) => {
                self.forget(node);
                Err(RoundError::Node(format!("{node}: {e}")))
            }
            Err(_) => {
                // A reply may still come on a multiplexed connection, but one that stalls is
                // not worth keeping.
                self.forget(node);
                Err(RoundError::Node(format!("{node}: no answer in time")))
            }
        }
    }

    /// The connection to `node`, opened on first use.
    async fn conn(
        &self,
        node: &str,
        deadline: Instant,
    ) -> Result<MultiplexedConnection, RoundError> {
        let cell = Arc::clone(
            self.conns
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(node.to_owned())
                .or_default(),
        );
        let left = deadline
            .saturating_duration_since(Instant::now())
            .min(self.connect_timeout);
        let open = cell.get_or_try_init(|| async {
            let client = redis::Client::open(self.node_info(node)?)?;
            client
                .get_multiplexed_async_connection_with_config(&self.connection)
                .await
        });
        match tokio::time::timeout(left, open).await {
            Ok(Ok(conn)) => Ok(conn.clone()),
            Ok(Err(e)) => {
                self.forget(node);
                Err(RoundError::Node(format!("{node}: {e}")))
            }
            Err(_) => Err(RoundError::Node(format!("{node}: cannot connect in time"))),
        }
    }

    /// Drops the connection to `node` (multiplexed connections do not reconnect by themselves).
    fn forget(&self, node: &str) {
        self.conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(node);
    }

    /// The first seed's credentials and settings, at `node`'s address.
    fn node_info(&self, node: &str) -> Result<ConnectionInfo, RedisError> {
        let (host, port) = node
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_owned(), p.parse().ok()?)))
            .ok_or_else(|| RedisError::from((redis::ErrorKind::Parse, "bad node address")))?;
        Ok(self.seeds[0]
            .clone()
            .set_addr(ConnectionAddr::Tcp(host, port)))
    }

    /// Reads `CLUSTER SLOTS` from a known master or a seed, unless someone refreshed since
    /// `seen` was current.
    async fn refresh(&self, seen: u64, deadline: Instant) -> Result<(), String> {
        let _one_at_a_time = self.refreshing.lock().await;
        let topo = self.current();
        if topo.generation != seen {
            return Ok(());
        }
        let mut candidates: Vec<Addr> = topo.masters.clone();
        candidates.extend(self.seeds.iter().filter_map(|s| match s.addr() {
            ConnectionAddr::Tcp(h, p) => Some(format!("{h}:{p}")),
            _ => None,
        }));
        let mut last = "no node to ask".to_owned();
        for node in candidates {
            match self.cluster_slots(&node, deadline).await {
                Ok((owner, masters)) => {
                    *self
                        .topology
                        .write()
                        .unwrap_or_else(PoisonError::into_inner) = Arc::new(Topology {
                        owner,
                        masters,
                        generation: seen + 1,
                    });
                    return Ok(());
                }
                Err(e) => last = e,
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        Err(format!("cannot read the slot map: {last}"))
    }

    async fn cluster_slots(
        &self,
        node: &str,
        deadline: Instant,
    ) -> Result<(Vec<Option<u16>>, Vec<Addr>), String> {
        let mut conn = self.conn(node, deadline).await.map_err(|e| e.to_string())?;
        let left = deadline.saturating_duration_since(Instant::now());
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SLOTS");
        let query = cmd.query_async::<Value>(&mut conn);
        let value = match tokio::time::timeout(left, query).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                self.forget(node);
                return Err(format!("{node}: {e}"));
            }
            Err(_) => return Err(format!("{node}: no answer in time")),
        };
        let host = node.rsplit_once(':').map_or(node, |(h, _)| h);
        parse_slots(&value, host).ok_or_else(|| format!("{node}: unexpected CLUSTER SLOTS answer"))
    }
}

/// Why a round left commands unanswered.
#[derive(Debug)]
enum RoundError {
    /// A node could not be reached or did not answer: retry after a refresh.
    Node(String),
    /// A command failed for good (a script error): no retry.
    Failed(String),
}

impl RoundError {
    fn as_failed(&self) -> Result<(), PortError> {
        match self {
            Self::Node(_) => Ok(()),
            Self::Failed(m) => Err(PortError::Failed(format!("redis cluster: {m}"))),
        }
    }
}

impl std::fmt::Display for RoundError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Node(m) | Self::Failed(m) => f.write_str(m),
        }
    }
}

/// What a node's answer to one command means for it.
fn classify(v: Value) -> Result<Next, RoundError> {
    let Value::ServerError(e) = v else {
        return Ok(Next::Done(v));
    };
    let detail = e.details().unwrap_or_default();
    Ok(match e.code() {
        "MOVED" | "CLUSTERDOWN" | "READONLY" => Next::Refresh,
        "ASK" => match detail.split_ascii_whitespace().nth(1) {
            Some(addr) => Next::Ask(addr.to_owned()),
            None => Next::Refresh,
        },
        "TRYAGAIN" | "LOADING" | "MASTERDOWN" => Next::Wait,
        "NOSCRIPT" => Next::Now,
        code => return Err(RoundError::Failed(format!("{code} {detail}"))),
    })
}

/// The owner of every slot and the masters, from a `CLUSTER SLOTS` answer given by a node on
/// `host` (an empty host in the answer means that one).
fn parse_slots(value: &Value, host: &str) -> Option<(Vec<Option<u16>>, Vec<Addr>)> {
    let Value::Array(ranges) = value else {
        return None;
    };
    let mut owner = vec![None; usize::from(SLOTS)];
    let mut masters: Vec<Addr> = Vec::new();
    for range in ranges {
        let Value::Array(fields) = range else {
            return None;
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return None;
        };
        let node_host = match master.first()? {
            Value::BulkString(h) if h.is_empty() => host.to_owned(),
            Value::BulkString(h) => String::from_utf8(h.clone()).ok()?,
            Value::SimpleString(h) => h.clone(),
            _ => return None,
        };
        let Value::Int(port) = master.get(1)? else {
            return None;
        };
        let addr = format!("{node_host}:{port}");
        let index = match masters.iter().position(|m| *m == addr) {
            Some(i) => i,
            None => {
                masters.push(addr);
                masters.len() - 1
            }
        };
        let index = u16::try_from(index).ok()?;
        let (start, end) = (usize::try_from(*start).ok()?, usize::try_from(*end).ok()?);
        for slot in owner.get_mut(start..=end)? {
            *slot = Some(index);
        }
    }
    Some((owner, masters))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn cluster_slots_are_read_with_an_empty_host_meaning_the_asked_node() {
        let answer = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                Value::Array(vec![bulk("10.0.0.1"), Value::Int(7101), bulk("id1")]),
                Value::Array(vec![bulk("10.0.0.4"), Value::Int(7104), bulk("id4")]),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                Value::Array(vec![bulk(""), Value::Int(7102), bulk("id2")]),
            ]),
        ]);
        let (owner, masters) = parse_slots(&answer, "10.0.0.9").unwrap();
        assert_eq!(masters, ["10.0.0.1:7101", "10.0.0.9:7102"]);
        assert_eq!(
            (owner[0], owner[5460], owner[5461]),
            (Some(0), Some(0), Some(1))
        );
        assert_eq!(owner[16383], Some(1));
    }

    #[test]
    fn redirections_and_transient_errors_are_retried_and_others_are_not() {
        let err = |s: &str| redis::parse_redis_value(format!("-{s}\r\n").as_bytes()).unwrap();
        assert!(matches!(
            classify(Value::Int(1)),
            Ok(Next::Done(Value::Int(1)))
        ));
        assert!(matches!(
            classify(err("MOVED 3999 127.0.0.1:6381")),
            Ok(Next::Refresh)
        ));
        assert!(
            matches!(classify(err("ASK 3999 127.0.0.1:6381")), Ok(Next::Ask(a)) if a == "127.0.0.1:6381")
        );
        assert!(matches!(classify(err("TRYAGAIN x")), Ok(Next::Wait)));
        assert!(matches!(classify(err("NOSCRIPT x")), Ok(Next::Now)));
        assert!(matches!(
            classify(err("ERR boom")),
            Err(RoundError::Failed(_))
        ));
    }
}
