//! The closed-loop load generator: N clients, one open connection each, one request in flight
//! per client, for a fixed window after a warm-up.
//!
//! ```text
//!  connect N clients ──> all start at T0 ──warm-up──> T1 ──measured window──> T2
//!  an operation counts if it started at or after T1 and finished by T2
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cluster_api::{Client, ClientError, ClientReply, ClientRequest, Endpoint};

use crate::etcd::EtcdConnection;
use crate::stats::Measured;

/// Keys read by the `get` workload (written once by [`preload`]).
pub(crate) const GET_KEYS: usize = 64;
/// Distinct keys each `set` client cycles through.
const SET_KEYS_PER_CLIENT: u64 = 1024;

/// The operation a point measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Op {
    /// `kv set` / etcd `Put`.
    Set,
    /// Linearizable `kv get` / etcd `Range`.
    Get,
}

impl Op {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Op::Set => "set",
            Op::Get => "get",
        }
    }
}

/// The system under load and where its leader listens.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    Clusterd(Endpoint),
    Etcd(SocketAddr),
}

/// One client's open connection.
enum Connection {
    Clusterd(Client),
    Etcd(EtcdConnection),
}

/// A failed operation; `broken` means reconnect before the next one.
struct Failure {
    message: String,
    broken: bool,
}

impl Target {
    async fn connect(&self) -> anyhow::Result<Connection> {
        match self {
            Target::Clusterd(endpoint) => Ok(Connection::Clusterd(
                Client::connect(endpoint, Duration::from_secs(5))
                    .await
                    .with_context(|| format!("failed to connect to clusterd at {endpoint}"))?,
            )),
            Target::Etcd(address) => Ok(Connection::Etcd(EtcdConnection::connect(*address).await?)),
        }
    }
}

fn get_key(index: usize) -> String {
    format!("bench/get/{index:04}")
}

/// The value stored under `get_key(index)`: `value` (ASCII) with its first 4 bytes replaced by the
/// index, so that a read of the wrong key is caught and the size stays the same.
fn get_value(index: usize, value: &str) -> String {
    let tail = value.get(4.min(value.len())..).unwrap_or_default();
    format!("{index:04}{tail}")
}

impl Connection {
    async fn set(&mut self, key: String, value: &str) -> Result<(), Failure> {
        match self {
            Connection::Clusterd(client) => {
                let reply = client
                    .call(ClientRequest::KvSet { key: key.clone(), value: value.to_owned() })
                    .await
                    .map_err(clusterd_failure)?;
                match reply {
                    ClientReply::Done { .. } => Ok(()),
                    other => {
                        Err(Failure { message: format!("unexpected reply to kv set {key}: {other:?}"), broken: false })
                    }
                }
            }
            Connection::Etcd(connection) => connection
                .put(key.as_bytes(), value.as_bytes())
                .await
                .map_err(|err| Failure { message: err.message, broken: err.broken }),
        }
    }

    /// Reads `key` and checks it holds `expected`.
    async fn get(&mut self, key: String, expected: &str) -> Result<(), Failure> {
        let found = match self {
            Connection::Clusterd(client) => {
                match client.call(ClientRequest::KvGet { key: key.clone() }).await.map_err(clusterd_failure)? {
                    ClientReply::Value { value, .. } => Some(value.into_bytes()),
                    other => {
                        return Err(Failure {
                            message: format!("unexpected reply to kv get {key}: {other:?}"),
                            broken: false,
                        })
                    }
                }
            }
            Connection::Etcd(connection) => connection
                .get(key.as_bytes())
                .await
                .map_err(|err| Failure { message: err.message, broken: err.broken })?,
        };
        match found {
            Some(value) if value == expected.as_bytes() => Ok(()),
            Some(value) => Err(Failure {
                message: format!("key {key} holds {:?}, expected {expected:?}", String::from_utf8_lossy(&value)),
                broken: false,
            }),
            None => Err(Failure { message: format!("key {key} not found"), broken: false }),
        }
    }
}

fn clusterd_failure(err: ClientError) -> Failure {
    let broken = !matches!(err, ClientError::Api(_));
    Failure { message: err.to_string(), broken }
}

/// Writes the keys the `get` workload reads.
pub(crate) async fn preload(target: &Target, value: &str) -> anyhow::Result<()> {
    let mut connection = target.connect().await?;
    for index in 0..GET_KEYS {
        connection
            .set(get_key(index), &get_value(index, value))
            .await
            .map_err(|failure| anyhow::anyhow!(failure.message))
            .with_context(|| format!("failed to preload key {}", get_key(index)))?;
    }
    Ok(())
}

/// Runs one point: `clients` connections doing `op` back to back.
pub(crate) async fn run_point(
    target: &Target,
    op: Op,
    clients: usize,
    warmup: Duration,
    duration: Duration,
    value: &str,
) -> anyhow::Result<Measured> {
    let mut connections = Vec::with_capacity(clients);
    for client in 0..clients {
        connections
            .push(target.connect().await.with_context(|| format!("failed to open connection of client {client}"))?);
    }
    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + warmup;
    let deadline = measure_from + duration;
    let value: Arc<str> = Arc::from(value);
    let mut tasks = tokio::task::JoinSet::new();
    for (client, connection) in connections.into_iter().enumerate() {
        let target = target.clone();
        let value = Arc::clone(&value);
        tasks.spawn(
            async move { run_client(target, connection, op, client, value, (start, measure_from, deadline)).await },
        );
    }
    let mut measured = Measured { window_secs: duration.as_secs_f64(), ..Measured::default() };
    while let Some(result) = tasks.join_next().await {
        let client = result.context("load client task failed")?;
        measured.latencies_us.extend(client.latencies_us);
        measured.errors += client.errors;
        if measured.first_error.is_none() {
            measured.first_error = client.first_error;
        }
    }
    Ok(measured)
}

/// One client's loop; `(start, measure_from, deadline)` bound the warm-up and the window.
async fn run_client(
    target: Target,
    connection: Connection,
    op: Op,
    client: usize,
    value: Arc<str>,
    (start, measure_from, deadline): (Instant, Instant, Instant),
) -> Measured {
    let mut measured = Measured::default();
    let mut connection = Some(connection);
    let mut sequence: u64 = 0;
    tokio::time::sleep_until(start.into()).await;
    loop {
        let began = Instant::now();
        if began >= deadline {
            break;
        }
        let counted = began >= measure_from;
        let Some(open) = connection.as_mut() else {
            match target.connect().await {
                Ok(fresh) => connection = Some(fresh),
                Err(err) => {
                    if counted {
                        measured.errors += 1;
                        measured.first_error.get_or_insert_with(|| format!("client {client}: {err:#}"));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            continue;
        };
        let result = match op {
            Op::Set => {
                let key = format!("bench/set/{client}/{}", sequence % SET_KEYS_PER_CLIENT);
                open.set(key, &value).await
            }
            Op::Get => {
                let index = (client + sequence as usize) % GET_KEYS;
                open.get(get_key(index), &get_value(index, &value)).await
            }
        };
        sequence += 1;
        let finished = Instant::now();
        match result {
            Ok(()) => {
                if counted && finished <= deadline {
                    let micros = (finished - began).as_micros();
                    measured.latencies_us.push(u32::try_from(micros).unwrap_or(u32::MAX));
                }
            }
            Err(failure) => {
                if counted {
                    measured.errors += 1;
                    measured.first_error.get_or_insert_with(|| format!("client {client}: {}", failure.message));
                }
                if failure.broken {
                    connection = None;
                }
            }
        }
    }
    measured
}
