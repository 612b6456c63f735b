//! OCF result classes and the one place where every failure becomes an OCF exit code.

use cluster_host::{BlockError, MountError, NetError, ProcessError};

/// OCF exit codes (0–7; 8 and 9 are the promotable variants, kept for completeness).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OcfStatus {
    /// 0: the action succeeded (monitor: running).
    Success,
    /// 1: a soft error; a restart may help.
    ErrGeneric,
    /// 2: wrong arguments to the agent.
    ErrArgs,
    /// 3: the action is not implemented.
    ErrUnimplemented,
    /// 4: insufficient privileges.
    ErrPerm,
    /// 5: something the agent needs is missing on this node (a binary, an interface, a device).
    ErrInstalled,
    /// 6: the configuration is wrong (on every node).
    ErrConfigured,
    /// 7: the resource is not running (a clean, expected state).
    NotRunning,
    /// 8: running as promoted.
    RunningPromoted,
    /// 9: failed as promoted.
    FailedPromoted,
}

impl OcfStatus {
    /// The exit code.
    pub fn code(self) -> i32 {
        match self {
            OcfStatus::Success => 0,
            OcfStatus::ErrGeneric => 1,
            OcfStatus::ErrArgs => 2,
            OcfStatus::ErrUnimplemented => 3,
            OcfStatus::ErrPerm => 4,
            OcfStatus::ErrInstalled => 5,
            OcfStatus::ErrConfigured => 6,
            OcfStatus::NotRunning => 7,
            OcfStatus::RunningPromoted => 8,
            OcfStatus::FailedPromoted => 9,
        }
    }

    /// From an exit code; unknown codes are a generic error, as Pacemaker treats them.
    pub fn from_code(code: i32) -> OcfStatus {
        match code {
            0 => OcfStatus::Success,
            2 => OcfStatus::ErrArgs,
            3 => OcfStatus::ErrUnimplemented,
            4 => OcfStatus::ErrPerm,
            5 => OcfStatus::ErrInstalled,
            6 => OcfStatus::ErrConfigured,
            7 => OcfStatus::NotRunning,
            8 => OcfStatus::RunningPromoted,
            9 => OcfStatus::FailedPromoted,
            _ => OcfStatus::ErrGeneric,
        }
    }

    /// The OCF name, e.g. `OCF_ERR_CONFIGURED`.
    pub fn name(self) -> &'static str {
        match self {
            OcfStatus::Success => "OCF_SUCCESS",
            OcfStatus::ErrGeneric => "OCF_ERR_GENERIC",
            OcfStatus::ErrArgs => "OCF_ERR_ARGS",
            OcfStatus::ErrUnimplemented => "OCF_ERR_UNIMPLEMENTED",
            OcfStatus::ErrPerm => "OCF_ERR_PERM",
            OcfStatus::ErrInstalled => "OCF_ERR_INSTALLED",
            OcfStatus::ErrConfigured => "OCF_ERR_CONFIGURED",
            OcfStatus::NotRunning => "OCF_NOT_RUNNING",
            OcfStatus::RunningPromoted => "OCF_RUNNING_PROMOTED",
            OcfStatus::FailedPromoted => "OCF_FAILED_PROMOTED",
        }
    }

    /// Hard errors mean "do not retry on this node" (ERR_PERM, ERR_INSTALLED, ERR_ARGS) or "anywhere"
    /// (ERR_CONFIGURED); the engine uses this to decide between a local restart and relocation.
    pub fn is_hard(self) -> bool {
        matches!(self, OcfStatus::ErrArgs | OcfStatus::ErrPerm | OcfStatus::ErrInstalled | OcfStatus::ErrConfigured)
    }
}

impl std::fmt::Display for OcfStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

/// A failed agent action: its OCF class and a lowercase message naming the object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} [{status}]")]
pub struct AgentError {
    /// The OCF class.
    pub status: OcfStatus,
    /// What failed.
    pub message: String,
}

impl AgentError {
    /// An error of class `status`.
    pub fn new(status: OcfStatus, message: impl Into<String>) -> Self {
        AgentError { status, message: message.into() }
    }

    /// OCF_ERR_GENERIC.
    pub fn generic(message: impl Into<String>) -> Self {
        Self::new(OcfStatus::ErrGeneric, message)
    }

    /// OCF_ERR_CONFIGURED.
    pub fn configured(message: impl Into<String>) -> Self {
        Self::new(OcfStatus::ErrConfigured, message)
    }

    /// OCF_ERR_INSTALLED.
    pub fn installed(message: impl Into<String>) -> Self {
        Self::new(OcfStatus::ErrInstalled, message)
    }
}

impl From<NetError> for AgentError {
    fn from(error: NetError) -> Self {
        let status = match &error {
            NetError::NoSuchInterface { .. } => OcfStatus::ErrInstalled,
            NetError::PermissionDenied { .. } => OcfStatus::ErrPerm,
            NetError::AddressExists { .. } | NetError::Failed { .. } => OcfStatus::ErrGeneric,
        };
        AgentError::new(status, error.to_string())
    }
}

impl From<MountError> for AgentError {
    fn from(error: MountError) -> Self {
        let status = match &error {
            MountError::PermissionDenied { .. } => OcfStatus::ErrPerm,
            MountError::Busy { .. } | MountError::Failed { .. } | MountError::InFlight { .. } => OcfStatus::ErrGeneric,
        };
        AgentError::new(status, error.to_string())
    }
}

impl From<BlockError> for AgentError {
    fn from(error: BlockError) -> Self {
        let status = match &error {
            BlockError::NotInstalled { .. } => OcfStatus::ErrInstalled,
            BlockError::Fsck { .. } | BlockError::Failed { .. } => OcfStatus::ErrGeneric,
        };
        AgentError::new(status, error.to_string())
    }
}

impl From<ProcessError> for AgentError {
    fn from(error: ProcessError) -> Self {
        let status = match &error {
            ProcessError::NotFound { .. } | ProcessError::UnknownIdentity { .. } => OcfStatus::ErrInstalled,
            ProcessError::PermissionDenied { .. } => OcfStatus::ErrPerm,
            ProcessError::Failed { .. } => OcfStatus::ErrGeneric,
        };
        AgentError::new(status, error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_generic() {
        for code in 0..=9 {
            assert_eq!(OcfStatus::from_code(code).code(), code);
        }
        assert_eq!(OcfStatus::from_code(42), OcfStatus::ErrGeneric);
        assert_eq!(OcfStatus::from_code(-1), OcfStatus::ErrGeneric);
        assert_eq!(OcfStatus::ErrConfigured.to_string(), "OCF_ERR_CONFIGURED (6)");
    }

    #[test]
    fn host_errors_map_to_their_class() {
        let missing: AgentError = NetError::NoSuchInterface { interface: "eth9".to_string() }.into();
        assert_eq!(missing.status, OcfStatus::ErrInstalled);
        assert_eq!(missing.to_string(), "interface eth9 not found [OCF_ERR_INSTALLED (5)]");
        let denied: AgentError = MountError::PermissionDenied { action: "mount /dev/sdb at /srv".to_string() }.into();
        assert_eq!(denied.status, OcfStatus::ErrPerm);
        let not_found: AgentError = ProcessError::NotFound { program: "/usr/bin/nope".to_string() }.into();
        assert_eq!(not_found.status, OcfStatus::ErrInstalled);
        assert!(OcfStatus::ErrConfigured.is_hard() && !OcfStatus::ErrGeneric.is_hard());
    }
}
