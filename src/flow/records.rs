//! `[runs]` record keeping, as a flow file or the config sets it: which
//! run records a flow keeps, how many, and how large. [`crate::record`]
//! applies it.

/// Default of [`RecordPolicy::max_bytes`]: the largest stored record.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1024 * 1024;

/// Which run records a flow keeps (`keep` under `[runs]` in the flow file
/// or the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Keep {
    /// Every run's.
    #[default]
    All,
    /// Only those of runs that ended `failed`, `timed_out` or `aborted`.
    Failed,
    /// None once the run has ended.
    None,
}

impl Keep {
    /// The rule written as `text`.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "all" => Keep::All,
            "failed" => Keep::Failed,
            "none" => Keep::None,
            _ => return None,
        })
    }

    /// The rule as written.
    pub fn as_str(self) -> &'static str {
        match self {
            Keep::All => "all",
            Keep::Failed => "failed",
            Keep::None => "none",
        }
    }
}

/// A flow's record keeping: which runs, at most how many records, and how
/// large each may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordPolicy {
    /// Which runs keep their record once ended.
    pub keep: Keep,
    /// Most records kept for the flow; the oldest go first. `None`: no cap.
    pub max: Option<u64>,
    /// Largest stored record, in bytes of JSON (`runs.max_record_bytes`).
    pub max_bytes: usize,
}

impl Default for RecordPolicy {
    fn default() -> Self {
        Self {
            keep: Keep::All,
            max: None,
            max_bytes: DEFAULT_MAX_RECORD_BYTES,
        }
    }
}
