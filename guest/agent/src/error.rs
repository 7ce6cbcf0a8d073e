use uvm_agent_api::ttrpc;

/// What an agent request can fail with; each maps to a ttrpc status code.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Exists(String),
    #[error("{0}")]
    State(String),
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Runtime(#[from] uvm_runtime::Error),
    /// A process of the VM whose command cannot run.
    #[error("{cmd}: {why}")]
    NoCommand {
        cmd: String,
        why: String,
        found: bool,
    },
    /// Not a failure: the host asked for power-off with this status.
    #[error("shutting down with status {0}")]
    Shutdown(u8),
}

impl From<AgentError> for ttrpc::Error {
    fn from(e: AgentError) -> ttrpc::Error {
        use ttrpc::Code;
        let code = match &e {
            AgentError::Usage(_) | AgentError::Invalid(_) => Code::INVALID_ARGUMENT,
            AgentError::NotFound(_) => Code::NOT_FOUND,
            AgentError::Exists(_) => Code::ALREADY_EXISTS,
            AgentError::State(_) => Code::FAILED_PRECONDITION,
            AgentError::Setup(_) | AgentError::Shutdown(_) => Code::INTERNAL,
            // A command that cannot run: the host tells it as a shell
            // would (127, 126), apart from the agent's own refusals.
            AgentError::Runtime(uvm_runtime::Error::CommandNotFound(_)) => Code::NOT_FOUND,
            AgentError::Runtime(uvm_runtime::Error::NotExecutable { .. }) => {
                Code::PERMISSION_DENIED
            }
            AgentError::Runtime(
                uvm_runtime::Error::AlreadyPaused(_) | uvm_runtime::Error::NotPaused(_),
            ) => Code::FAILED_PRECONDITION,
            AgentError::NoCommand { found: false, .. } => Code::NOT_FOUND,
            AgentError::NoCommand { found: true, .. } => Code::PERMISSION_DENIED,
            AgentError::Runtime(_) => Code::UNKNOWN,
        };
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
    }
}
