//! The embedded demo's accounts node: an event-sourced bank account behind `SnapshotLayer`,
//! its events and snapshots in SQLite in a temporary directory (removed when the gateway
//! stops).
//!
//! | request | answer |
//! |---|---|
//! | `POST /accounts/{id}/open` | 200, or 422 when already open |
//! | `POST /accounts/{id}/deposit` with `{"amount": N}` | 200 with the balance |
//! | `POST /accounts/{id}/withdraw` with `{"amount": N}` | 200, or 422 on insufficient funds |
//! | `GET /accounts/{id}` | the balance, the version, and how it was loaded (snapshot + events replayed) |
//!
//! `Idempotency-Key` on a command makes it apply once however often it is sent.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use http::{HeaderMap, StatusCode};
use omega_penta::snapshot::{
    Aggregate, AggregateId, CommandId, Decider, Envelope, Repository, Snapshot, SnapshotConfig,
    SnapshotLayer, SqliteStore, Trigger, as_refusal,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower::ServiceExt;

/// An account's state, as snapshots store it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Account {
    open: bool,
    balance: i64,
}

/// What happened to an account.
#[derive(Debug, Serialize, Deserialize)]
pub enum AccountEvent {
    /// It was opened.
    Opened,
    /// Money came in.
    Deposited(i64),
    /// Money went out.
    Withdrew(i64),
}

/// What a client asks of an account.
#[derive(Debug)]
pub enum AccountCommand {
    /// Open it.
    Open,
    /// Put money in.
    Deposit(i64),
    /// Take money out.
    Withdraw(i64),
}

/// A command the account refuses (422 to the client).
#[derive(Debug)]
pub struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = Refused;

    fn apply(&mut self, event: &AccountEvent) {
        match event {
            AccountEvent::Opened => self.open = true,
            AccountEvent::Deposited(n) => self.balance += n,
            AccountEvent::Withdrew(n) => self.balance -= n,
        }
    }

    fn decide(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, Refused> {
        let refuse = |why: &str| Err(Refused(why.to_owned()));
        match command {
            AccountCommand::Open if self.open => refuse("the account is already open"),
            AccountCommand::Open => Ok(vec![AccountEvent::Opened]),
            _ if !self.open => refuse("the account is not open"),
            AccountCommand::Deposit(n) | AccountCommand::Withdraw(n) if *n <= 0 => {
                refuse("the amount must be positive")
            }
            AccountCommand::Deposit(n) => Ok(vec![AccountEvent::Deposited(*n)]),
            AccountCommand::Withdraw(n) if *n > self.balance => Err(Refused(format!(
                "insufficient funds: balance {}, requested {n}",
                self.balance
            ))),
            AccountCommand::Withdraw(n) => Ok(vec![AccountEvent::Withdrew(*n)]),
        }
    }
}

type Accounts = Snapshot<Decider<Account>, Account>;

/// The running accounts node; its database goes when it is dropped.
#[derive(Debug)]
pub struct AccountsNode {
    /// Its address.
    pub addr: SocketAddr,
    /// The SQLite file holding events and snapshots.
    pub database: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// Starts the accounts node on a free loopback port, with a new SQLite database in a
/// temporary directory: a snapshot every 20 events, so `GET` shows a load that replays a few
/// events after a snapshot instead of the whole history.
pub async fn start() -> std::io::Result<AccountsNode> {
    let dir = tempfile::tempdir()?;
    let database = dir.path().join("accounts.db");
    let store = SqliteStore::open(&database)
        .await
        .map_err(std::io::Error::other)?;
    let config = SnapshotConfig::default()
        .trigger(Trigger::every_events(20).or(Trigger::replay_cost(Duration::from_millis(5))));
    let repo: Repository<Account> = Repository::builder(store)
        .config(config)
        .build()
        .map_err(std::io::Error::other)?;
    let accounts: Accounts = SnapshotLayer::new(repo).decider();
    let app = axum::Router::new()
        .route("/accounts/{id}", get(show))
        .route("/accounts/{id}/{command}", post(command))
        .with_state(accounts);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(AccountsNode {
        addr,
        database,
        _dir: dir,
    })
}

#[derive(Deserialize)]
struct Amount {
    amount: i64,
}

fn answer(status: StatusCode, doc: Value) -> (StatusCode, Json<Value>) {
    (status, Json(doc))
}

async fn command(
    State(accounts): State<Accounts>,
    Path((id, command)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, Json<Value>) {
    let amount = || {
        serde_json::from_slice::<Amount>(&body)
            .map(|a| a.amount)
            .map_err(|e| {
                answer(
                    StatusCode::BAD_REQUEST,
                    json!({ "error": format!("expected {{\"amount\": N}}: {e}") }),
                )
            })
    };
    let command = match command.as_str() {
        "open" => AccountCommand::Open,
        "deposit" => match amount() {
            Ok(n) => AccountCommand::Deposit(n),
            Err(bad) => return bad,
        },
        "withdraw" => match amount() {
            Ok(n) => AccountCommand::Withdraw(n),
            Err(bad) => return bad,
        },
        other => {
            return answer(
                StatusCode::NOT_FOUND,
                json!({ "error": format!("no command {other:?}: open, deposit or withdraw") }),
            );
        }
    };
    let Ok(id) = AggregateId::new(id) else {
        return answer(
            StatusCode::BAD_REQUEST,
            json!({ "error": "bad account id" }),
        );
    };
    let envelope = match headers.get("idempotency-key").map(|v| v.to_str()) {
        None => Envelope::new(id, command),
        Some(Ok(key)) => match CommandId::new(key) {
            Ok(key) => Envelope::with_id(id, key, command),
            Err(_) => {
                return answer(
                    StatusCode::BAD_REQUEST,
                    json!({ "error": "bad Idempotency-Key" }),
                );
            }
        },
        Some(Err(_)) => {
            return answer(
                StatusCode::BAD_REQUEST,
                json!({ "error": "bad Idempotency-Key" }),
            );
        }
    };
    match accounts.oneshot(envelope).await {
        Ok(Ok(done)) => answer(
            StatusCode::OK,
            json!({
                "balance": done.state().balance,
                "version": done.version(),
                "duplicate": done.is_duplicate(),
            }),
        ),
        Ok(Err(refused)) => answer(
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({ "error": refused.to_string() }),
        ),
        // The layer's own refusals: 409 conflict, 503 store unavailable, 500 unreadable.
        Err(err) => answer(
            as_refusal(&*err)
                .and_then(|r| StatusCode::from_u16(r.status()).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            json!({ "error": err.to_string() }),
        ),
    }
}

async fn show(
    State(accounts): State<Accounts>,
    Path(id): Path<String>,
) -> (StatusCode, Json<Value>) {
    let Ok(id) = AggregateId::new(id) else {
        return answer(
            StatusCode::BAD_REQUEST,
            json!({ "error": "bad account id" }),
        );
    };
    match accounts.repository().load(&id).await {
        Ok(l) if l.version() == 0 => {
            answer(StatusCode::NOT_FOUND, json!({ "error": "no such account" }))
        }
        Ok(l) => answer(
            StatusCode::OK,
            json!({
                "balance": l.state().balance,
                "open": l.state().open,
                "version": l.version(),
                "loaded_from_snapshot": l.snapshot_version(),
                "events_replayed": l.replayed(),
            }),
        ),
        Err(e) => answer(
            StatusCode::from_u16(e.as_refusal().status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            json!({ "error": e.to_string() }),
        ),
    }
}
