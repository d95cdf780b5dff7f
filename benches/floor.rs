//! The benchmark's floor: a hyper 1.x server doing only the work no gateway
//! that authenticates, parses and durably queues a request can skip. Per
//! request it verifies the HS256 Bearer JWT with `jsonwebtoken` (no cache),
//! parses the JSON body into a `serde_json::Value`, appends the raw body to a
//! Redis stream with one `XADD` over one multiplexed (auto-pipelined)
//! connection, and answers a small JSON. `scripts/bench.sh` loads it beside
//! flowgate and reports flowgate's figures as ratios to it.
//!
//!   floor <listen addr> <redis url>    (the key in `FLOWGATE_SIGNING_KEY`)

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use deadpool_redis::redis::{self, aio::MultiplexedConnection};
use http_body_util::{BodyExt, Full};
use hyper::StatusCode;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::net::TcpListener;

// The allocator flowgate uses: the choice is free, so the floor gets it too.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const STREAM: &str = "floor:runs";

struct Floor {
    key: DecodingKey,
    validation: Validation,
    redis: MultiplexedConnection,
}

#[derive(serde::Deserialize)]
struct Claims {
    #[allow(dead_code)]
    sub: String,
}

fn answer(status: StatusCode, body: &'static str) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    response
}

async fn handle(floor: Arc<Floor>, req: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let Some(token) = token else {
        return answer(StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized"}"#);
    };
    if jsonwebtoken::decode::<Claims>(&token, &floor.key, &floor.validation).is_err() {
        return answer(StatusCode::UNAUTHORIZED, r#"{"error":"unauthorized"}"#);
    }
    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return answer(StatusCode::BAD_REQUEST, r#"{"error":"bad body"}"#);
    };
    if serde_json::from_slice::<serde_json::Value>(&body).is_err() {
        return answer(StatusCode::BAD_REQUEST, r#"{"error":"bad json"}"#);
    }
    let mut redis = floor.redis.clone();
    let added: redis::RedisResult<String> = redis::cmd("XADD")
        .arg(STREAM)
        .arg("*")
        .arg("body")
        .arg(&body[..])
        .query_async(&mut redis)
        .await;
    match added {
        Ok(_) => answer(StatusCode::ACCEPTED, r#"{"accepted":true}"#),
        Err(_) => answer(StatusCode::SERVICE_UNAVAILABLE, r#"{"error":"redis"}"#),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:8091".into());
    let redis_url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/0".into());
    let secret = std::env::var("FLOWGATE_SIGNING_KEY")?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["sub"]);
    let floor = Arc::new(Floor {
        key: DecodingKey::from_secret(secret.trim().as_bytes()),
        validation,
        redis: redis::Client::open(redis_url)?
            .get_multiplexed_async_connection()
            .await?,
    });
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("floor listening on {addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let floor = floor.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let floor = floor.clone();
                async move { Ok::<_, Infallible>(handle(floor, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
