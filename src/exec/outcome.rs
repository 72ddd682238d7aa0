//! What a plugin call produced, as plain data: the same for code run in this process and for
//! code run in a tenant's process.

/// What a successful call produced.
#[derive(Debug)]
pub enum Outcome {
    /// The whole success body: the envelope with the result's JSON inside.
    Json(Vec<u8>),
    /// A `dpms.Response`, sent as is.
    Custom {
        status: u16,
        /// Names and values the executor checked as valid HTTP, in the plugin's order (two
        /// `Set-Cookie`s stay two); plain strings so they can cross a process boundary.
        headers: Vec<(String, String)>,
        content_type: String,
        body: Vec<u8>,
    },
}

/// Why a call produced no [`Outcome`].
#[derive(Debug)]
pub enum CallFailure {
    /// The plugin raised: `"ValueError: boom"` and the formatted traceback.
    Raised {
        exception: String,
        traceback: String,
    },
    /// The result cannot be converted to JSON.
    Unserializable(String),
    /// The queue of calls waiting for a Python thread is full.
    Overloaded,
    /// An inline call ran past `MAX_FUNCTION_SECS` (stopped by the watchdog, or just slow).
    TimedOut,
    /// The process running the call died (a tenant process that crashed or was killed).
    WorkerLost,
    /// A fault of dpms itself.
    Internal(String),
}

pub type CallResult = Result<Outcome, CallFailure>;
