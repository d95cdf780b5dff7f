//! The states of runs and steps, written as records, metrics, the CLI and
//! logs show them.

use serde::{Deserialize, Serialize};

/// Where a run stands: the one vocabulary of run states, shared by the
/// engine's reports, run records, metrics, the CLI and logs. Written as
/// `queued`, `running`, `succeeded`, `failed`, `timed_out` and `aborted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunState {
    /// Accepted, waiting for a worker.
    Queued,
    /// Executing.
    Running,
    /// Stopped to wait for a step's retry (see [`super::RunReport::retry`]);
    /// written as `queued`, with the record's `next_attempt_at`.
    Waiting,
    /// Every step ran or was skipped, or failed with `on_error = "continue"`.
    Succeeded,
    /// A step failed with `on_error = "stop"`, or a `fail` step ran.
    Failed,
    /// The flow's `timeout` passed.
    TimedOut,
    /// Given up on: dead-lettered, or its flow is no longer loaded.
    Aborted,
}

impl RunState {
    /// Every state as written, in order; what [`RunState::parse`] reads.
    pub const NAMES: [&'static str; 6] = [
        "queued",
        "running",
        "succeeded",
        "failed",
        "timed_out",
        "aborted",
    ];

    /// The state as users see it.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued | RunState::Waiting => "queued",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::TimedOut => "timed_out",
            RunState::Aborted => "aborted",
        }
    }

    /// The state written as `text`.
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "queued" => RunState::Queued,
            "running" => RunState::Running,
            "succeeded" => RunState::Succeeded,
            "failed" => RunState::Failed,
            "timed_out" => RunState::TimedOut,
            "aborted" => RunState::Aborted,
            _ => return None,
        })
    }
}

/// In the admin API's document: a string, one of [`RunState::NAMES`].
impl utoipa::PartialSchema for RunState {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .enum_values(Some(RunState::NAMES))
            .into()
    }
}

impl utoipa::ToSchema for RunState {}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `pad`, so table columns (`{:<9}`) line up.
        f.pad(self.as_str())
    }
}

impl PartialEq<&str> for RunState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Serialize for RunState {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for RunState {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(deserializer)?;
        RunState::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown run state `{text}`")))
    }
}

/// How one step ended; written as `succeeded`, `failed` or `skipped`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// It ran and produced its output.
    Succeeded,
    /// It failed (its run may go on, with `on_error = "continue"`).
    Failed,
    /// Its `if` was false.
    Skipped,
}

impl StepState {
    /// The state as users see it.
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::Skipped => "skipped",
        }
    }
}

impl std::fmt::Display for StepState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl PartialEq<&str> for StepState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::RunState;

    #[test]
    fn run_states_are_written_as_before() {
        for (state, text) in [
            (RunState::Queued, "queued"),
            (RunState::Running, "running"),
            (RunState::Succeeded, "succeeded"),
            (RunState::Failed, "failed"),
            (RunState::TimedOut, "timed_out"),
            (RunState::Aborted, "aborted"),
        ] {
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{text}\"")
            );
            let back: RunState = serde_json::from_str(&format!("\"{text}\"")).unwrap();
            assert_eq!(back, state);
            assert_eq!(format!("{state:<10}|"), format!("{text:<10}|"));
        }
        for (state, text) in [
            (super::StepState::Succeeded, "succeeded"),
            (super::StepState::Failed, "failed"),
            (super::StepState::Skipped, "skipped"),
        ] {
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{text}\"")
            );
        }
        // A run waiting for its retry reads as queued.
        assert_eq!(RunState::Waiting.as_str(), "queued");
        assert!(serde_json::from_str::<RunState>("\"paused\"").is_err());
    }
}
