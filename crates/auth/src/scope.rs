//! Scopes of the Docker token specification
//! (<https://distribution.github.io/distribution/spec/auth/scope/>):
//! `repository:team-a/app:pull,push`, `repository(plugin):name:pull`, `registry:catalog:*`.
//! Knows nothing about who asks or what they are granted.

use std::fmt;
use std::str::FromStr;

use oci::RepoName;

use crate::actions::Actions;

/// What a scope names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Resource {
    Repository(RepoName),
    /// `registry:catalog:*`, the repository listing.
    Catalog,
}

/// One requested scope. Action words the registry does not know are dropped when parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub resource: Resource,
    pub actions: Actions,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("scope {0:?}: expected type:name:actions")]
    Syntax(String),
    #[error("scope {0:?}: unknown resource type")]
    UnknownType(String),
    #[error("scope {0:?}: invalid repository name")]
    Name(String),
}

impl FromStr for Scope {
    type Err = ScopeError;

    /// The type ends at the first ':' (its `(class)` suffix dropped), the actions start after
    /// the last one; repository names never contain ':'.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || ScopeError::Syntax(s.to_owned());
        let (typ, rest) = s.split_once(':').ok_or_else(syntax)?;
        let (name, actions) = rest.rsplit_once(':').ok_or_else(syntax)?;
        let typ = match typ.split_once('(') {
            Some((t, class)) if class.ends_with(')') => t,
            Some(_) => return Err(syntax()),
            None => typ,
        };
        let words = actions.split(',').filter(|w| !w.is_empty());
        match typ {
            "repository" => {
                let name: RepoName = name.parse().map_err(|_| ScopeError::Name(s.to_owned()))?;
                Ok(Scope { resource: Resource::Repository(name), actions: Actions::parse_lenient(words) })
            }
            "registry" if name == "catalog" => {
                // The catalog knows one action, `*`; it is kept as "all".
                let actions = if actions.split(',').any(|w| w == "*") { Actions::ALL } else { Actions::NONE };
                Ok(Scope { resource: Resource::Catalog, actions })
            }
            _ => Err(ScopeError::UnknownType(s.to_owned())),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.resource {
            Resource::Repository(name) => write!(f, "repository:{}:{}", name.as_str(), self.actions),
            Resource::Catalog => f.write_str(if self.actions.is_empty() { "registry:catalog:" } else { "registry:catalog:*" }),
        }
    }
}

/// The scopes of a token request's `scope` parameters. Each parameter may hold several
/// space-separated scopes; invalid ones are dropped (a client asking for something unknown gets a
/// token without it, which is what the specification asks for).
pub fn parse_scopes<'a>(params: impl IntoIterator<Item = &'a str>) -> Vec<Scope> {
    params.into_iter().flat_map(str::split_whitespace).filter_map(|s| s.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::Action;

    fn repo(s: &str) -> Resource {
        Resource::Repository(s.parse().expect("name"))
    }

    #[test]
    fn parses_the_specs_forms() {
        let s: Scope = "repository:team-a/app:pull,push".parse().expect("scope");
        assert_eq!(s.resource, repo("team-a/app"));
        assert_eq!(s.actions, [Action::Pull, Action::Push].into_iter().collect());
        assert_eq!(s.to_string(), "repository:team-a/app:pull,push");

        let s: Scope = "repository(plugin):samalba/my-app:pull".parse().expect("class");
        assert_eq!(s.resource, repo("samalba/my-app"));
        assert_eq!(s.to_string(), "repository:samalba/my-app:pull");

        let s: Scope = "repository:a:push,frobnicate,,pull".parse().expect("unknown action");
        assert_eq!(s.actions.to_string(), "pull,push");
        let s: Scope = "repository:a:*".parse().expect("star");
        assert_eq!(s.actions, Actions::ALL);
        let s: Scope = "repository:a:".parse().expect("no actions");
        assert!(s.actions.is_empty());

        let s: Scope = "registry:catalog:*".parse().expect("catalog");
        assert_eq!(s, Scope { resource: Resource::Catalog, actions: Actions::ALL });
        assert_eq!(s.to_string(), "registry:catalog:*");
    }

    #[test]
    fn rejects_what_it_cannot_name() {
        assert!(matches!("repository".parse::<Scope>(), Err(ScopeError::Syntax(_))));
        assert!(matches!("repository:app".parse::<Scope>(), Err(ScopeError::Syntax(_))));
        assert!(matches!("repository(x:a:pull".parse::<Scope>(), Err(ScopeError::Syntax(_))));
        assert!(matches!("repository:Upper/Case:pull".parse::<Scope>(), Err(ScopeError::Name(_))));
        assert!(matches!("repository:host:5000/app:pull".parse::<Scope>(), Err(ScopeError::Name(_))));
        assert!(matches!("registry:other:*".parse::<Scope>(), Err(ScopeError::UnknownType(_))));
        assert!(matches!("image:a:pull".parse::<Scope>(), Err(ScopeError::UnknownType(_))));
    }

    #[test]
    fn parses_several_parameters_dropping_bad_scopes() {
        let scopes = parse_scopes(["repository:a:pull repository:b:push", "bogus", "  registry:catalog:* ", "repository:BAD:pull"]);
        let shown: Vec<String> = scopes.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["repository:a:pull", "repository:b:push", "registry:catalog:*"]);
        assert!(parse_scopes([]).is_empty());
    }
}
