//! The relay's health problems, as the text of the Health frame clients show.
//!
//! Tailscale's client shows a Health frame's text as a warning about this relay's region and
//! clears it on an empty one (derper never sends one). The relay keeps its region-wide
//! problems here; a connection adds its own (it is being rate limited) when the writer
//! encodes the frame, so each client always gets the current whole text.

/// A region-wide problem the relay reports to its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Problem {
    /// The relay is draining (shutting down or being taken out of rotation).
    Draining,
    /// The relay cannot reach some of its region's other relays.
    MeshUnreachable,
}

/// The set of current problems and their texts.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Health {
    problems: std::collections::BTreeMap<Problem, String>,
}

impl Health {
    /// Sets (`Some`) or clears (`None`) `problem`. Returns whether the text changed.
    pub(crate) fn set(&mut self, problem: Problem, text: Option<String>) -> bool {
        match text {
            Some(t) => self.problems.insert(problem, t.clone()).as_ref() != Some(&t),
            None => self.problems.remove(&problem).is_some(),
        }
    }

    /// The Health frame text for a connection: every region-wide problem, then the
    /// connection's own, joined with "; "; empty when all is well.
    pub(crate) fn text(&self, connection_problem: Option<&str>) -> String {
        self.problems
            .values()
            .map(String::as_str)
            .chain(connection_problem)
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Whether any region-wide problem is set.
    pub(crate) fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_join_in_a_stable_order_and_clear() {
        let mut h = Health::default();
        assert_eq!(h.text(None), "");
        assert!(h.set(Problem::MeshUnreachable, Some("mesh down".into())));
        assert!(
            !h.set(Problem::MeshUnreachable, Some("mesh down".into())),
            "unchanged"
        );
        assert!(h.set(Problem::Draining, Some("draining".into())));
        assert_eq!(h.text(None), "draining; mesh down");
        assert_eq!(
            h.text(Some("rate limited")),
            "draining; mesh down; rate limited"
        );
        assert!(h.set(Problem::Draining, None));
        assert!(!h.set(Problem::Draining, None));
        assert_eq!(h.text(None), "mesh down");
        assert!(h.set(Problem::MeshUnreachable, None));
        assert!(h.is_empty());
        assert_eq!(h.text(Some("rate limited")), "rate limited");
    }
}
