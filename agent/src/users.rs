//! Whom a task runs as: its framework's `user` (Mesos semantics). An agent running as root
//! switches to that user before the task starts, and refuses `root` unless started with
//! `--allow-root-tasks`; an agent running as another user cannot switch, and runs every
//! task as itself.

use std::ffi::{CStr, CString};

/// The account a task runs as, when the agent switches users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    /// The user's name.
    pub name: String,
    /// Its uid and primary gid.
    pub uid: u32,
    /// Its primary group.
    pub gid: u32,
    /// Its home directory.
    pub home: String,
}

/// The account named `name` on this machine, if any.
pub fn lookup(name: &str) -> Result<Option<RunAs>, String> {
    let c_name = CString::new(name).map_err(|_| format!("user {name:?} is not a user name"))?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 16 << 10];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives the reads below.
    let rc = unsafe {
        libc::getpwnam_r(
            c_name.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        return Err(format!(
            "looking up user {name:?}: {}",
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    if result.is_null() {
        return Ok(None);
    }
    // SAFETY: getpwnam_r filled `pwd`, whose strings point into `buf`.
    let home = unsafe { CStr::from_ptr(pwd.pw_dir) }.to_string_lossy().into_owned();
    Ok(Some(RunAs {
        name: name.to_string(),
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
        home,
    }))
}

/// The name of the account with `uid`, if any.
pub fn name_of(uid: u32) -> Option<String> {
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0u8; 16 << 10];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buf` outlives the read below.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: getpwuid_r filled `pwd`, whose strings point into `buf`.
    Some(unsafe { CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned())
}

/// Whom a task of a framework with `user` runs as on an agent whose effective uid is
/// `agent_uid`: `None` when the agent cannot switch users (it is not root) and the task runs
/// as the agent. The error is the task's TASK_FAILED message.
pub fn decide(user: &str, agent_uid: u32, allow_root: bool) -> Result<Option<RunAs>, String> {
    if agent_uid != 0 {
        return Ok(None);
    }
    // A framework that names no user gets the agent's, root.
    let name = if user.is_empty() { "root" } else { user };
    let account = lookup(name)?.ok_or_else(|| format!("user {name:?} does not exist on this agent"))?;
    if account.uid == 0 && !allow_root {
        return Err(format!(
            "this agent does not run tasks as root (user {name:?}); run the framework as another user, or start the agent with --allow-root-tasks"
        ));
    }
    Ok(Some(account))
}

/// This process's effective uid.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_refused_unless_allowed_and_unknown_users_fail() {
        let e = decide("root", 0, false).unwrap_err();
        assert!(e.contains("--allow-root-tasks"), "{e}");
        assert!(decide("", 0, false).unwrap_err().contains("root"));
        assert_eq!(decide("root", 0, true).unwrap().unwrap().uid, 0);
        let e = decide("no-such-user-here", 0, true).unwrap_err();
        assert!(e.contains("does not exist"), "{e}");
        // An agent that is not root runs everything as itself.
        assert_eq!(decide("root", 1000, false).unwrap(), None);
        assert!(lookup("bad\0name").is_err());
    }

    #[test]
    fn nobody_is_found() {
        // Every Debian and Alpine system has it.
        let nobody = lookup("nobody").unwrap().expect("nobody exists");
        assert_ne!(nobody.uid, 0);
    }
}
