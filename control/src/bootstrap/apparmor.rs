//! Loading the AppArmor profile of `sluiced` into the kernel, when the
//! node runs AppArmor.
//!
//! "Enabled" means the kernel has AppArmor on
//! (`/sys/module/apparmor/parameters/enabled` is `Y`) and securityfs shows
//! it (`/sys/kernel/security/apparmor`); loading then needs
//! `apparmor_parser` (Debian's `apparmor`). When AppArmor is off the
//! profile is installed but not loaded, and the log says what that means
//! for the DaemonSet.
//!
//! Thread-safety: none needed; runs `apparmor_parser` child processes.

use std::path::Path;
use std::process::Command;

use super::BootstrapError;

/// Whether to load the profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Load it when AppArmor is enabled on this node.
    Auto,
    /// Never touch the kernel (install the file only).
    Never,
}

/// Why AppArmor is not usable on this node, or `None` when it is enabled.
pub fn disabled_reason() -> Option<String> {
    let enabled = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled")
        .map(|s| s.trim() == "Y")
        .unwrap_or(false);
    if !enabled {
        return Some(
            "AppArmor is not enabled in this node's kernel (/sys/module/apparmor/parameters/enabled is not Y)".into(),
        );
    }
    if !Path::new("/sys/kernel/security/apparmor").exists() {
        return Some(
            "securityfs is not mounted here (/sys/kernel/security/apparmor is missing): mount it, or in a container mount the host's /sys/kernel/security".into(),
        );
    }
    None
}

fn parser(args: &[&str], profile: &Path) -> Result<(), BootstrapError> {
    let out = Command::new("apparmor_parser")
        .args(args)
        .arg(profile)
        .output()
        .map_err(|e| {
            BootstrapError::AppArmor(format!(
                "AppArmor is enabled on this node but apparmor_parser cannot run ({e}): install Debian's apparmor package (in the node image too), or use --apparmor never and load the profile on the host (deploy/bootstrap.sh)"
            ))
        })?;
    if !out.status.success() {
        return Err(BootstrapError::AppArmor(format!(
            "`apparmor_parser {} {}` failed: {}",
            args.join(" "),
            profile.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Loads (or replaces) `profile` in the kernel when `mode` is
/// [`Mode::Auto`] and AppArmor is enabled; returns whether it did. When it
/// does not, the log says why.
///
/// # Errors
/// [`BootstrapError::AppArmor`] when `apparmor_parser` is missing or
/// rejects the profile.
pub fn load_if_enabled(mode: Mode, profile: &Path) -> Result<bool, BootstrapError> {
    if mode == Mode::Never {
        tracing::info!(
            "apparmor: not loading {} (--apparmor never)",
            profile.display()
        );
        return Ok(false);
    }
    if let Some(why) = disabled_reason() {
        tracing::warn!(
            "apparmor: {why}; the profile {} is installed but not loaded, so the DaemonSet's sluiced container cannot use localhost/sluiced: enable AppArmor, or remove that annotation (securityContext.appArmorProfile)",
            profile.display()
        );
        return Ok(false);
    }
    // -r: replace a loaded profile of the same name; -W: write the cache.
    parser(&["-r", "-W"], profile)?;
    tracing::info!("apparmor: profile {} loaded", profile.display());
    Ok(true)
}

/// Removes `profile` from the kernel (it was loaded by [`load_if_enabled`]).
///
/// # Errors
/// [`BootstrapError::AppArmor`] when `apparmor_parser` fails.
pub fn unload(profile: &Path) -> Result<(), BootstrapError> {
    if let Some(why) = disabled_reason() {
        tracing::info!(
            "apparmor: {why}; nothing to unload for {}",
            profile.display()
        );
        return Ok(());
    }
    parser(&["-R"], profile)?;
    tracing::info!("apparmor: profile {} unloaded", profile.display());
    Ok(())
}
