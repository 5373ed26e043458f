//! Names a workload gives for budgets below its own (the `x-spendguard-agent` request header):
//! the caller is known by its cgroup, so it may name only its own agent and the budgets below it.
//!
//! A name without a dot is relative (`task-42` from `acme.research` means `acme.research.task-42`);
//! a dotted name is absolute and must lie inside the caller's subtree. Nothing a workload writes
//! can name a sibling, a parent or a root: `..`, empty segments, uppercase and names over 63
//! characters are not agent names at all.

use super::AgentName;

/// The request header that routes a request to a budget below the caller's (stripped before
/// forwarding).
pub const HDR_ROUTE_AGENT: &str = "x-spendguard-agent";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubtreeError {
    #[error("{given:?} is not an agent name ({problem}); name a budget below {caller} as a relative segment (task-42) or in full ({caller}.task-42)")]
    Invalid {
        caller: AgentName,
        given: String,
        problem: String,
    },
    #[error("{name} is outside {caller}'s budget tree: a workload may name only {caller} and the budgets below it")]
    /// Boxed: names are 64 bytes inline, and two would make every `Result` of `resolve` this big.
    Outside {
        caller: Box<AgentName>,
        name: Box<AgentName>,
    },
}

/// The budget `given` names, from the point of view of `caller`: `caller` itself or a descendant.
pub fn resolve(caller: &AgentName, given: &str) -> Result<AgentName, SubtreeError> {
    let invalid = |problem: String| SubtreeError::Invalid {
        caller: caller.clone(),
        given: given.chars().take(80).collect(),
        problem,
    };
    let name = if given.contains('.') {
        AgentName::new(given).map_err(|e| invalid(e.problem))?
    } else {
        // Check the segment alone first, so the error names what the workload wrote.
        AgentName::new(given).map_err(|e| invalid(e.problem))?;
        AgentName::new(&format!("{caller}.{given}")).map_err(|e| invalid(e.problem))?
    };
    if !name.is_within(caller) {
        return Err(SubtreeError::Outside {
            caller: Box::new(caller.clone()),
            name: Box::new(name),
        });
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> AgentName {
        AgentName::new(s).expect("valid")
    }

    #[test]
    fn relative_and_absolute_names_inside_the_subtree() {
        let caller = name("acme.research");
        assert_eq!(
            resolve(&caller, "task-42"),
            Ok(name("acme.research.task-42"))
        );
        assert_eq!(
            resolve(&caller, "acme.research.task-42.sub"),
            Ok(name("acme.research.task-42.sub"))
        );
        assert_eq!(resolve(&caller, "acme.research"), Ok(caller.clone()));
        // A bare root name is relative: it names a child, never the root.
        assert_eq!(resolve(&caller, "acme"), Ok(name("acme.research.acme")));
    }

    #[test]
    fn nothing_outside_the_subtree_can_be_named() {
        let caller = name("acme.research");
        for outside in [
            "acme.other",
            "acme.researcher",
            "other.research",
            "acme.research2.x",
        ] {
            assert!(
                matches!(resolve(&caller, outside), Err(SubtreeError::Outside { .. })),
                "{outside}"
            );
        }
        let long = "a".repeat(60);
        for invalid in [
            "",
            "..",
            ".",
            "acme..research",
            "../acme",
            ".task",
            "task.",
            "Task-42",
            "ACME.RESEARCH",
            "task 42",
            "task/42",
            "-task",
            "tâsk",
            long.as_str(),
        ] {
            let e = resolve(&caller, invalid).expect_err(invalid);
            assert!(matches!(e, SubtreeError::Invalid { .. }), "{invalid}: {e}");
        }
    }
}
