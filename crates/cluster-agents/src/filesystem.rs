//! The `filesystem` agent: a block device (path, `UUID=`, `LABEL=`) mounted at a mountpoint.

use std::path::PathBuf;
use std::time::Duration;

use cluster_host::{DeviceName, Host, MountError};
use cluster_package::{DeviceSpec, FilesystemResource};

use crate::agent::{meta_data_xml, ActionContext, Agent, MonitorState};
use crate::status::AgentError;

const DEVICE_POLL: Duration = Duration::from_millis(200);
/// How long holders get between SIGTERM and SIGKILL.
pub(crate) const HOLDER_GRACE: Duration = Duration::from_secs(2);
pub(crate) const UNMOUNT_RETRY_PAUSE: Duration = Duration::from_millis(300);

pub(crate) struct FilesystemAgent {
    name: String,
    params: FilesystemResource,
    host: Host,
}

impl FilesystemAgent {
    pub(crate) fn new(name: &str, params: &FilesystemResource, host: &Host) -> Self {
        FilesystemAgent { name: name.to_string(), params: params.clone(), host: host.clone() }
    }

    fn device_name(&self) -> DeviceName {
        match &self.params.device {
            DeviceSpec::Path(path) => DeviceName::Path(path.clone()),
            DeviceSpec::Uuid(uuid) => DeviceName::Uuid(uuid.clone()),
            DeviceSpec::Label(label) => DeviceName::Label(label.clone()),
        }
    }

    /// Waits until no mount, unmount or check of the mountpoint is in flight (one abandoned by an
    /// earlier action, e.g. a start that timed out while `mount(2)` was blocked), at most most of
    /// this action's timeout, so that the failure names the device and the mountpoint instead of
    /// being a bare timeout. Only then does the mount table tell whether the filesystem is mounted.
    async fn settle(&self, context: &ActionContext) -> Result<(), AgentError> {
        let within = context.timeout.saturating_sub(context.timeout / 10);
        Ok(self.host.mounts.settle(&self.params.mountpoint, within).await?)
    }

    /// The source mounted at our mountpoint, if any.
    async fn mounted_source(&self) -> Result<Option<String>, AgentError> {
        let mounts = self.host.mounts.mounts().await?;
        Ok(mounts.into_iter().rev().find(|entry| entry.target == self.params.mountpoint).map(|entry| entry.source))
    }

    async fn wait_for_device(&self) -> Result<PathBuf, AgentError> {
        let name = self.device_name();
        let deadline = self.host.clock.now() + self.params.device_timeout;
        loop {
            if let Some(path) = self.host.block_devices.resolve(&name).await? {
                return Ok(path);
            }
            if self.host.clock.now() >= deadline {
                return Err(AgentError::installed(format!(
                    "device {name} for resource {} did not appear within {:?}",
                    self.name, self.params.device_timeout
                )));
            }
            self.host.clock.sleep(DEVICE_POLL).await;
        }
    }

    async fn kill_holders(&self) -> Result<Vec<u32>, AgentError> {
        let mountpoint = &self.params.mountpoint;
        let holders = self.host.mounts.holders(mountpoint).await?;
        if holders.is_empty() {
            return Ok(holders);
        }
        tracing::warn!(resource = %self.name, ?holders, mountpoint = %mountpoint.display(), "terminating processes holding the mount");
        for pid in &holders {
            self.host.mounts.signal_holder(*pid, libc::SIGTERM).await?;
        }
        let deadline = self.host.clock.now() + HOLDER_GRACE;
        while self.host.clock.now() < deadline {
            if self.host.mounts.holders(mountpoint).await?.is_empty() {
                return Ok(holders);
            }
            self.host.clock.sleep(Duration::from_millis(100)).await;
        }
        for pid in self.host.mounts.holders(mountpoint).await? {
            self.host.mounts.signal_holder(pid, libc::SIGKILL).await?;
        }
        // Give the kernel a moment to release the files of killed processes.
        for _ in 0..20 {
            if self.host.mounts.holders(mountpoint).await?.is_empty() {
                break;
            }
            self.host.clock.sleep(Duration::from_millis(50)).await;
        }
        Ok(holders)
    }
}

#[async_trait::async_trait]
impl Agent for FilesystemAgent {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "filesystem"
    }

    async fn validate(&self) -> Result<(), AgentError> {
        let mountpoint = &self.params.mountpoint;
        if !mountpoint.is_absolute() || mountpoint.as_os_str() == "/" {
            return Err(AgentError::configured(format!(
                "resource {}: mountpoint {} must be an absolute path other than /",
                self.name,
                mountpoint.display()
            )));
        }
        if self.params.fstype.is_empty() {
            return Err(AgentError::configured(format!("resource {}: fstype is empty", self.name)));
        }
        match &self.params.device {
            DeviceSpec::Path(path) if !path.is_absolute() => Err(AgentError::configured(format!(
                "resource {}: device {} is not an absolute path",
                self.name,
                path.display()
            ))),
            DeviceSpec::Uuid(value) | DeviceSpec::Label(value) if value.is_empty() => {
                Err(AgentError::configured(format!("resource {}: empty device {}", self.name, self.params.device)))
            }
            _ => Ok(()),
        }
    }

    async fn start(&self, context: &ActionContext) -> Result<(), AgentError> {
        self.validate().await?;
        self.settle(context).await?;
        let device = self.wait_for_device().await?;
        let mountpoint = &self.params.mountpoint;
        if let Some(source) = self.mounted_source().await? {
            if std::path::Path::new(&source) == device {
                return Ok(());
            }
            return Err(AgentError::configured(format!(
                "{} is already mounted from {source}, not {} (resource {})",
                mountpoint.display(),
                device.display(),
                self.name
            )));
        }
        tracing::info!(resource = %self.name, epoch = context.epoch, device = %device.display(), mountpoint = %mountpoint.display(), "mounting");
        if self.params.fsck {
            self.host.block_devices.fsck(&device, &self.params.fstype, context.timeout).await?;
        }
        self.host.mounts.create_directory(mountpoint).await?;
        self.host.mounts.mount(&device, mountpoint, &self.params.fstype, &self.params.options).await?;
        Ok(())
    }

    async fn stop(&self, context: &ActionContext) -> Result<(), AgentError> {
        let mountpoint = &self.params.mountpoint;
        // Never "already stopped" while a mount of it may still land.
        self.settle(context).await?;
        if self.mounted_source().await?.is_none() {
            return Ok(());
        }
        tracing::info!(resource = %self.name, epoch = context.epoch, mountpoint = %mountpoint.display(), "unmounting");
        let mut last_holders = Vec::new();
        for attempt in 1..=self.params.unmount_retries {
            match self.host.mounts.unmount(mountpoint).await {
                Ok(()) => {
                    if self.mounted_source().await?.is_none() {
                        return Ok(());
                    }
                    // Stacked mounts: go round again.
                }
                Err(MountError::Busy { .. }) => {
                    if self.params.kill_holders {
                        last_holders = self.kill_holders().await?;
                    } else {
                        last_holders = self.host.mounts.holders(mountpoint).await?;
                    }
                }
                Err(error) => return Err(error.into()),
            }
            if attempt < self.params.unmount_retries {
                self.host.clock.sleep(UNMOUNT_RETRY_PAUSE).await;
            }
        }
        let holders = if last_holders.is_empty() {
            String::new()
        } else {
            format!(" (held by pids {})", last_holders.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
        };
        Err(AgentError::generic(format!(
            "failed to unmount {} after {} attempts: target is busy{holders}",
            mountpoint.display(),
            self.params.unmount_retries
        )))
    }

    async fn monitor(&self, context: &ActionContext) -> Result<MonitorState, AgentError> {
        // Neither running nor stopped while a mount of it may still land: a probe must not adopt or
        // dismiss it.
        self.settle(context).await?;
        if self.mounted_source().await?.is_none() {
            return Ok(MonitorState::NotRunning);
        }
        if context.depth >= 10 {
            self.host.mounts.check_read_write(&self.params.mountpoint).await?;
        }
        Ok(MonitorState::Running)
    }

    async fn meta_data(&self) -> Result<String, AgentError> {
        Ok(meta_data_xml(
            "filesystem",
            "block device mounted at a mountpoint",
            &[
                ("device", true, "", "device path, UUID=... or LABEL=..."),
                ("mountpoint", true, "", "absolute mountpoint, created if missing"),
                ("fstype", true, "", "filesystem type"),
                ("options", false, "", "mount options"),
                ("fsck", false, "false", "run fsck -a before mounting"),
                ("device_timeout", false, "10s", "how long to wait for the device to appear"),
                ("kill_holders", false, "true", "on stop, TERM then KILL processes holding the mount"),
                ("unmount_retries", false, "3", "unmount attempts"),
            ],
        ))
    }
}
