//! Flows: the model the engine and the trigger run, loading it from
//! `flows/*.toml` (see [`load`]), and the step kinds (see [`step`], one file
//! per kind).
//!
//! A [`Catalog`] is one consistent load: every valid flow plus the template
//! environment they were validated against. The server swaps whole catalogs,
//! so a request always sees a flow and its templates from the same load.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};

use crate::secret::Secret;
use crate::template::{RenderBudget, Templates};

pub mod load;
mod records;
pub mod reload;
mod spec;
pub mod step;

pub use load::{LoadOptions, LoadReport, is_valid_flow_id, load_catalog};
pub use records::{DEFAULT_MAX_RECORD_BYTES, Keep, RecordPolicy};
pub use step::{Action, OnError, Retry, Step};

/// One load of all flows and templates.
#[derive(Debug)]
pub struct Catalog {
    /// Every template the flows use, with what a render may cost.
    pub env: Templates,
    /// Valid flows by id.
    pub flows: HashMap<String, Arc<Flow>>,
    /// Flows kept from an earlier load because their new version failed
    /// validation, with the template environment they were validated against.
    pub kept: HashMap<String, Templates>,
    /// The problems of the files of the flows in `kept`, as `path:line:
    /// message`: what to fix before the file's version serves.
    pub problems: HashMap<String, Vec<String>>,
}

impl Catalog {
    /// A catalog with no flows.
    pub fn empty() -> Self {
        Self {
            env: Templates::new(crate::template::new_environment(), RenderBudget::default()),
            flows: HashMap::new(),
            kept: HashMap::new(),
            problems: HashMap::new(),
        }
    }

    /// The flow with id `id`.
    pub fn get(&self, id: &str) -> Option<&Arc<Flow>> {
        self.flows.get(id)
    }

    /// The template environment flow `id` renders with.
    pub fn env_of(&self, id: &str) -> &Templates {
        self.kept.get(id).unwrap_or(&self.env)
    }
}

/// The current catalog, shared by the trigger and the workers of a process.
#[derive(Debug, Clone)]
pub struct SharedCatalog(Arc<RwLock<Arc<Catalog>>>);

impl SharedCatalog {
    /// Shares `catalog`.
    pub fn new(catalog: Catalog) -> Self {
        Self(Arc::new(RwLock::new(Arc::new(catalog))))
    }

    /// A consistent snapshot: a flow and its templates from one load.
    pub fn get(&self) -> Arc<Catalog> {
        self.0.read().expect("catalog lock poisoned").clone()
    }

    /// Replaces the catalog for every later request and run.
    pub fn replace(&self, catalog: Catalog) {
        *self.0.write().expect("catalog lock poisoned") = Arc::new(catalog);
    }
}

/// A validated flow.
#[derive(Debug)]
pub struct Flow {
    /// The flow id: the file stem.
    pub id: String,
    /// Human name; the id when the file gives none.
    pub name: String,
    /// `draft`, `live` or `paused`.
    pub status: FlowStatus,
    /// Whole-run time limit.
    pub timeout: Duration,
    /// Content hash of the flow file, recorded on each run.
    pub version: String,
    /// Where the flow was loaded from.
    pub path: PathBuf,
    /// How requests reach the flow.
    pub trigger: Trigger,
    /// How the answer is rendered.
    pub response: ResponseSpec,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// Which of its run records are kept, and how many (`[runs]`).
    pub records: RecordPolicy,
}

/// A flow's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowStatus {
    /// Runs, with `run.live = false`.
    Draft,
    /// Runs.
    Live,
    /// Answers the fixed `biz_logic` body and records nothing.
    Paused,
}

impl FlowStatus {
    /// Parses a status as written in flow files.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "draft" => FlowStatus::Draft,
            "live" => FlowStatus::Live,
            "paused" => FlowStatus::Paused,
            _ => return None,
        })
    }

    /// The status as written in flow files.
    pub fn as_str(self) -> &'static str {
        match self {
            FlowStatus::Draft => "draft",
            FlowStatus::Live => "live",
            FlowStatus::Paused => "paused",
        }
    }
}

/// Whether the answer waits for the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Run, then answer.
    Sync,
    /// Queue the run and answer at once.
    Async,
}

impl Mode {
    /// The mode as written in flow files.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
            Mode::Async => "async",
        }
    }
}

/// `[trigger]`
#[derive(Debug)]
pub struct Trigger {
    /// The ref-id the parsed body appears under.
    pub ref_id: String,
    /// Accepted HTTP methods.
    pub methods: Vec<Method>,
    /// Sync or async.
    pub mode: Mode,
    /// Accept `Authorization: Bearer <jwt>`.
    pub bearer: bool,
    /// Accept `?access_token=<jwt>`.
    pub query_token: bool,
    /// Accept a provider body signature.
    pub signature: Option<SignatureConfig>,
    /// Largest accepted body, in bytes.
    pub max_body_bytes: usize,
    /// Accept any content type, exposing the body as `request.raw` only.
    pub accept_any: bool,
    /// Origins allowed to call from a browser; `*` allows any.
    pub cors_origins: Vec<String>,
    /// Request headers redacted on top of the server's list (lower case).
    pub redact_headers: Vec<String>,
    /// Query parameters redacted on top of the server's list.
    pub redact_query: Vec<String>,
}

/// A body-signature scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureScheme {
    /// `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`.
    StandardWebhooks,
    /// `Stripe-Signature: t=<ts>,v1=<hex>`.
    Stripe,
    /// `X-Hub-Signature-256: sha256=<hex>`.
    Github,
    /// `X-Shopify-Hmac-Sha256: <base64>`.
    Shopify,
    /// `X-Slack-Signature: v0=<hex>` with `X-Slack-Request-Timestamp`.
    Slack,
    /// HMAC-SHA256 of the body in a configurable header.
    HmacSha256,
}

impl SignatureScheme {
    /// Parses a scheme name as written in flow files.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "standard-webhooks" => Self::StandardWebhooks,
            "stripe" => Self::Stripe,
            "github" => Self::Github,
            "shopify" => Self::Shopify,
            "slack" => Self::Slack,
            "hmac-sha256" => Self::HmacSha256,
            _ => return None,
        })
    }
}

/// How the generic `hmac-sha256` scheme encodes its digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestEncoding {
    /// Lower- or upper-case hex.
    Hex,
    /// Standard base64.
    Base64,
}

/// `[trigger.signature]`
#[derive(Debug)]
pub struct SignatureConfig {
    /// The provider scheme.
    pub scheme: SignatureScheme,
    /// Environment variable the secret was read from.
    pub secret_env: String,
    /// The secret; `None` when the variable was unset at load, and then every signature fails.
    pub secret: Option<Secret<Vec<u8>>>,
    /// Accepted age of the signed timestamp, for schemes that sign one.
    pub tolerance: Duration,
    /// Header carrying the signature (`hmac-sha256` only).
    pub header: HeaderName,
    /// Digest encoding (`hmac-sha256` only).
    pub encoding: DigestEncoding,
    /// Text before the digest in the header, e.g. `sha256=` (`hmac-sha256` only).
    pub prefix: String,
}

/// `[response]`
#[derive(Debug)]
pub struct ResponseSpec {
    /// The status code.
    pub status: StatusSource,
    /// Body template name; `None` for the default body.
    pub body: Option<String>,
    /// Header names and their value templates.
    pub headers: Vec<(HeaderName, String)>,
    /// Content type guessed from the body template's name, used when no header sets one.
    pub default_content_type: &'static str,
    /// The answer for a failed run (`[response.on_error]`).
    pub on_error: Option<Box<ResponseSpec>>,
}

/// Where a response status comes from.
#[derive(Debug, Clone)]
pub enum StatusSource {
    /// A fixed status.
    Fixed(StatusCode),
    /// A template that must render to an integer 100..=599.
    Template(String),
}
