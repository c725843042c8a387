//! What may be done to a repository (`pull`, `push`, `delete`) and small sets of those, spelled
//! the way the Docker token specification spells them. Knows nothing about who asks.

use std::fmt;
use std::str::FromStr;

/// One action on a repository.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    /// Every action, in display order.
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Action::Pull => 1,
            Action::Push => 2,
            Action::Delete => 4,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown action {0:?} (expected pull, push, delete or *)")]
pub struct ActionError(pub String);

impl FromStr for Action {
    type Err = ActionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pull" => Ok(Action::Pull),
            "push" => Ok(Action::Push),
            "delete" => Ok(Action::Delete),
            _ => Err(ActionError(s.to_owned())),
        }
    }
}

/// A set of actions. Displays as `pull,push,delete` (in that order, only the members; empty
/// for none).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Actions(u8);

impl Actions {
    pub const NONE: Actions = Actions(0);
    pub const ALL: Actions = Actions(7);

    pub fn contains(self, action: Action) -> bool {
        self.0 & action.bit() != 0
    }

    pub fn insert(&mut self, action: Action) {
        self.0 |= action.bit();
    }

    #[must_use]
    pub fn union(self, other: Actions) -> Actions {
        Actions(self.0 | other.0)
    }

    #[must_use]
    pub fn intersection(self, other: Actions) -> Actions {
        Actions(self.0 & other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |a| self.contains(*a))
    }

    /// Parses a list of action words, `*` meaning all of them. An unknown word is an error (a
    /// typo in a policy must not silently grant less, or be mistaken for granting more).
    pub fn parse<'a>(words: impl IntoIterator<Item = &'a str>) -> Result<Actions, ActionError> {
        let mut set = Actions::NONE;
        for w in words {
            if w == "*" {
                set = Actions::ALL;
            } else {
                set.insert(w.parse()?);
            }
        }
        Ok(set)
    }

    /// Like [`Actions::parse`], but unknown words are ignored: the token specification lets
    /// clients ask for actions a registry does not know, and those are simply not granted.
    pub fn parse_lenient<'a>(words: impl IntoIterator<Item = &'a str>) -> Actions {
        let mut set = Actions::NONE;
        for w in words {
            if w == "*" {
                set = Actions::ALL;
            } else if let Ok(a) = w.parse() {
                set.insert(a);
            }
        }
        set
    }

    /// The words of the set, for a token's `access` claim.
    pub fn words(self) -> Vec<String> {
        self.iter().map(|a| a.as_str().to_owned()).collect()
    }
}

impl From<Action> for Actions {
    fn from(a: Action) -> Self {
        Actions(a.bit())
    }
}

impl FromIterator<Action> for Actions {
    fn from_iter<I: IntoIterator<Item = Action>>(iter: I) -> Self {
        let mut set = Actions::NONE;
        for a in iter {
            set.insert(a);
        }
        set
    }
}

impl fmt::Display for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(a.as_str())?;
        }
        Ok(())
    }
}

impl fmt::Debug for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Actions({self})")
    }
}

/// Serialized as a list of words; deserialized strictly (see [`Actions::parse`]), so a policy in
/// a configuration file can hold `actions: [pull, push]` or `["*"]`.
impl serde::Serialize for Actions {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(Action::as_str))
    }
}

impl<'de> serde::Deserialize<'de> for Actions {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let words = Vec::<String>::deserialize(d)?;
        Actions::parse(words.iter().map(String::as_str)).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations_and_display_order() {
        let mut a = Actions::NONE;
        assert!(a.is_empty());
        a.insert(Action::Delete);
        a.insert(Action::Pull);
        assert_eq!(a.to_string(), "pull,delete");
        assert!(a.contains(Action::Pull) && !a.contains(Action::Push));
        assert_eq!(a.union(Action::Push.into()), Actions::ALL);
        assert_eq!(a.intersection(Actions::from(Action::Pull)), Actions::from(Action::Pull));
        assert_eq!(Actions::ALL.to_string(), "pull,push,delete");
        assert_eq!(Actions::NONE.to_string(), "");
        assert_eq!(Actions::ALL.iter().collect::<Vec<_>>(), Action::ALL);
        assert_eq!(Actions::ALL.words(), ["pull", "push", "delete"]);
    }

    #[test]
    fn parsing_words() {
        assert_eq!(Actions::parse(["push", "pull"]), Ok([Action::Pull, Action::Push].into_iter().collect()));
        assert_eq!(Actions::parse(["*"]), Ok(Actions::ALL));
        assert_eq!(Actions::parse([]), Ok(Actions::NONE));
        assert_eq!(Actions::parse(["pull", "pul"]), Err(ActionError("pul".into())));
        assert_eq!(Actions::parse_lenient(["pull", "unknown", "Push"]), Actions::from(Action::Pull));
        assert_eq!(Actions::parse_lenient(["x", "*"]), Actions::ALL);
    }

    #[test]
    fn serde_round_trip_is_strict() {
        let a: Actions = serde_json::from_str(r#"["pull","delete"]"#).expect("parse");
        assert_eq!(serde_json::to_string(&a).expect("json"), r#"["pull","delete"]"#);
        assert!(serde_json::from_str::<Actions>(r#"["pull","write"]"#).is_err());
    }
}
