//! A bank account over HTTP: an event-sourced aggregate behind `SnapshotLayer`, its events
//! and snapshots in PostgreSQL (or SQLite), with a rate limit per client and a circuit breaker
//! in front of it, stacked with `ServiceBuilder`.
//!
//! ```text
//! cargo run --example bank_account --features full -- [DATABASE_URL] [--demo]
//! ```
//!
//! The rate limiter answers 429 (10 commands per second per client, by `x-client-id`); the
//! breaker opens after the database failed half of 10 requests and answers 503 at once while
//! it is open, so a dead database does not hold every client for a timeout.
//!
//! The database is the first argument or `DATABASE_URL` (`postgres://...`); with neither, a
//! SQLite file in a temporary directory. It listens on `127.0.0.1:3000` (`PORT` to change);
//! `--demo` runs a few requests against itself and exits.
//!
//! ```text
//! curl -X POST localhost:3000/accounts/alice/open
//! curl -X POST localhost:3000/accounts/alice/deposit -d '{"amount": 100}' -H 'content-type: application/json'
//! curl -X POST localhost:3000/accounts/alice/withdraw -d '{"amount": 500}' -H 'content-type: application/json'   # 422
//! curl localhost:3000/accounts/alice
//! ```
//!
//! A client may send `Idempotency-Key: <key>`: the same key is never applied twice.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use omega_penta::circuit_breaker::{
    CircuitBreaker, CircuitBreakerConfig, CircuitBreakerLayer, SlidingWindow,
};
use omega_penta::core::key::http::Header;
use omega_penta::rate_limit::{Limit, Quota, RateLimitLayer, RateLimiter};
use omega_penta::snapshot::{
    Aggregate, AggregateId, CommandId, Decider, Envelope, PgStore, Repository, Retention, Snapshot,
    SnapshotConfig, SnapshotLayer, SqliteStore, Trigger, as_refusal,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tower::ServiceExt;

/// The account's state: what snapshots store.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Account {
    open: bool,
    balance: i64,
    transactions: u64,
}

/// What happened to an account.
#[derive(Debug, Serialize, Deserialize)]
enum AccountEvent {
    Opened,
    Deposited { amount: i64 },
    Withdrew { amount: i64 },
}

/// What a client asks.
#[derive(Debug)]
enum AccountCommand {
    Open,
    Deposit(i64),
    Withdraw(i64),
}

/// The domain's refusals: answers to the client (422), not failures of the service.
#[derive(Debug, PartialEq)]
enum AccountError {
    AlreadyOpen,
    NotOpen,
    NonPositiveAmount,
    InsufficientFunds { balance: i64, requested: i64 },
}

impl std::fmt::Display for AccountError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccountError::AlreadyOpen => f.write_str("the account is already open"),
            AccountError::NotOpen => f.write_str("the account is not open"),
            AccountError::NonPositiveAmount => f.write_str("the amount must be positive"),
            AccountError::InsufficientFunds { balance, requested } => {
                write!(
                    f,
                    "insufficient funds: balance {balance}, requested {requested}"
                )
            }
        }
    }
}

impl std::error::Error for AccountError {}

impl Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = AccountCommand;
    type Event = AccountEvent;
    type Error = AccountError;

    fn apply(&mut self, event: &AccountEvent) {
        self.transactions += 1;
        match event {
            AccountEvent::Opened => self.open = true,
            AccountEvent::Deposited { amount } => self.balance += amount,
            AccountEvent::Withdrew { amount } => self.balance -= amount,
        }
    }

    fn decide(&self, command: &AccountCommand) -> Result<Vec<AccountEvent>, AccountError> {
        match command {
            AccountCommand::Open if self.open => Err(AccountError::AlreadyOpen),
            AccountCommand::Open => Ok(vec![AccountEvent::Opened]),
            _ if !self.open => Err(AccountError::NotOpen),
            AccountCommand::Deposit(n) | AccountCommand::Withdraw(n) if *n <= 0 => {
                Err(AccountError::NonPositiveAmount)
            }
            AccountCommand::Deposit(amount) => {
                Ok(vec![AccountEvent::Deposited { amount: *amount }])
            }
            AccountCommand::Withdraw(amount) if *amount > self.balance => {
                Err(AccountError::InsufficientFunds {
                    balance: self.balance,
                    requested: *amount,
                })
            }
            AccountCommand::Withdraw(amount) => {
                Ok(vec![AccountEvent::Withdrew { amount: *amount }])
            }
        }
    }
}

type Accounts = Snapshot<Decider<Account>, Account>;

#[derive(Deserialize)]
struct Amount {
    amount: i64,
}

async fn run(
    accounts: Accounts,
    id: String,
    headers: HeaderMap,
    command: AccountCommand,
) -> (StatusCode, Json<Value>) {
    let Ok(id) = AggregateId::new(id) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "bad account id" })),
        );
    };
    let envelope = match headers
        .get("idempotency-key")
        .map(|v| v.to_str().map(CommandId::new))
    {
        Some(Ok(Ok(key))) => Envelope::with_id(id, key, command),
        Some(_) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": "bad Idempotency-Key" })),
            );
        }
        None => Envelope::new(id, command),
    };
    match accounts.oneshot(envelope).await {
        Ok(Ok(done)) => (
            StatusCode::OK,
            Json(json!({
                "balance": done.state().balance,
                "version": done.version(),
                "duplicate": done.is_duplicate(),
            })),
        ),
        Ok(Err(refused)) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({ "error": refused.to_string() })),
        ),
        // The layer's refusals: 409 conflict, 503 store unavailable, 500 unreadable history.
        Err(err) => {
            let status = as_refusal(&*err)
                .and_then(|r| StatusCode::from_u16(r.status()).ok())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, Json(json!({ "error": err.to_string() })))
        }
    }
}

async fn open(
    State(a): State<Accounts>,
    Path(id): Path<String>,
    h: HeaderMap,
) -> (StatusCode, Json<Value>) {
    run(a, id, h, AccountCommand::Open).await
}

async fn deposit(
    State(a): State<Accounts>,
    Path(id): Path<String>,
    h: HeaderMap,
    Json(body): Json<Amount>,
) -> (StatusCode, Json<Value>) {
    run(a, id, h, AccountCommand::Deposit(body.amount)).await
}

async fn withdraw(
    State(a): State<Accounts>,
    Path(id): Path<String>,
    h: HeaderMap,
    Json(body): Json<Amount>,
) -> (StatusCode, Json<Value>) {
    run(a, id, h, AccountCommand::Withdraw(body.amount)).await
}

async fn show(State(a): State<Accounts>, Path(id): Path<String>) -> (StatusCode, Json<Value>) {
    let Ok(id) = AggregateId::new(id) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "bad account id" })),
        );
    };
    match a.repository().load(&id).await {
        Ok(l) if l.version() == 0 => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": "no such account" })),
        ),
        Ok(l) => (
            StatusCode::OK,
            Json(json!({
                "balance": l.state().balance,
                "open": l.state().open,
                "version": l.version(),
                "loaded_from_snapshot": l.snapshot_version(),
                "events_replayed": l.replayed(),
            })),
        ),
        Err(e) => (
            StatusCode::from_u16(e.as_refusal().status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Json(json!({ "error": e.to_string() })),
        ),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let demo = args.iter().any(|a| a == "--demo");
    let url = args
        .iter()
        .find(|a| !a.starts_with("--"))
        .cloned()
        .or_else(|| std::env::var("DATABASE_URL").ok());
    let _tmp;
    let config = SnapshotConfig::default()
        .trigger(Trigger::every_events(50).or(Trigger::replay_cost(Duration::from_millis(5))))
        .full_every(8)
        .retention(Retention::keep_last(3).max_age(Duration::from_secs(30 * 86_400)));
    let repo: Repository<Account> = match url {
        Some(url) if url.starts_with("postgres") => {
            println!("events and snapshots in PostgreSQL");
            Repository::builder(PgStore::connect(&url).await?)
                .config(config)
                .build()?
        }
        Some(url) => Repository::builder(SqliteStore::connect(&url).await?)
            .config(config)
            .build()?,
        None => {
            _tmp = tempfile::tempdir()?;
            let path = _tmp.path().join("accounts.db");
            println!(
                "no DATABASE_URL: events and snapshots in SQLite at {}",
                path.display()
            );
            Repository::builder(SqliteStore::open(&path).await?)
                .config(config)
                .build()?
        }
    };
    let accounts: Accounts = SnapshotLayer::new(repo).decider();
    // Ten commands per second per client, a breaker in front of the database: both answer
    // with responses (`.respond()`, `.http()`), so the router needs no error handling.
    let limiter = RateLimiter::builder()
        .limit(Limit::keyed(
            "per_client",
            Quota::per_second(10).with_burst(20),
            Header::new("x-client-id"),
        ))
        .build()?;
    let breaker = CircuitBreaker::with_config(
        "accounts_db",
        CircuitBreakerConfig::default()
            .sliding_window(SlidingWindow::CountBased(10))
            .minimum_calls(10)
            .failure_rate_threshold(50.0)
            .wait_duration(Duration::from_secs(10)),
    )?;
    let app = Router::new()
        .route("/accounts/{id}", get(show))
        .route("/accounts/{id}/open", post(open))
        .route("/accounts/{id}/deposit", post(deposit))
        .route("/accounts/{id}/withdraw", post(withdraw))
        .with_state(accounts.clone())
        .layer(
            tower::ServiceBuilder::new()
                .layer(RateLimitLayer::new(limiter).respond())
                .layer(CircuitBreakerLayer::new(breaker).http()),
        );

    if demo {
        use axum::body::Body;
        use http_body_util::BodyExt;
        let send = |method: &'static str, path: &'static str, body: Option<&'static str>| {
            let mut req = axum::http::Request::builder()
                .method(method)
                .uri(path)
                .header("x-client-id", "demo");
            if body.is_some() {
                req = req.header("content-type", "application/json");
            }
            let req = req.body(Body::from(body.unwrap_or("").to_owned())).unwrap();
            let app = app.clone();
            async move {
                let res = app.oneshot(req).await.unwrap();
                let status = res.status();
                let bytes = res.into_body().collect().await.unwrap().to_bytes();
                println!(
                    "{method} {path} -> {status} {}",
                    String::from_utf8_lossy(&bytes)
                );
                status
            }
        };
        // A client that is rate limited waits (a cell every 100 ms) and sends again.
        let limited = std::cell::Cell::new(0);
        let call = |method: &'static str, path: &'static str, body: Option<&'static str>| {
            let (send, limited) = (&send, &limited);
            async move {
                loop {
                    let status = send(method, path, body).await;
                    if status != 429 {
                        return status;
                    }
                    limited.set(limited.get() + 1);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        assert_eq!(call("POST", "/accounts/alice/open", None).await, 200);
        for _ in 0..60 {
            call("POST", "/accounts/alice/deposit", Some(r#"{"amount": 10}"#)).await;
        }
        println!(
            "{} requests were rate limited (429) and sent again",
            limited.get()
        );
        assert_eq!(
            call(
                "POST",
                "/accounts/alice/withdraw",
                Some(r#"{"amount": 5000}"#)
            )
            .await,
            422
        );
        assert_eq!(
            call(
                "POST",
                "/accounts/alice/withdraw",
                Some(r#"{"amount": 250}"#)
            )
            .await,
            200
        );
        accounts.repository().flush().await;
        assert_eq!(call("GET", "/accounts/alice", None).await, 200);
        return Ok(());
    }

    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(3000);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
