//! The access policy: which identity may do which actions on which repository. Rules grant
//! (their union is what a caller may do); nothing denies. Admins may do everything everywhere.
//!
//! Knows nothing about how the caller was authenticated, or about configuration files (the
//! binary builds the rules). Anything anonymous callers are granted, authenticated users are
//! granted too: logging in never takes rights away (docker sends credentials when it has them).

use std::collections::{BTreeMap, BTreeSet};

use oci::{RepoName, RepoPattern};

use crate::Identity;
use crate::actions::{Action, Actions};
use crate::scope::{Resource, Scope};
use crate::token::Access;

/// One grant: `actions` on the repositories `repositories` matches, to the listed users (`"*"`:
/// any authenticated user), the members of the listed groups, and anonymous callers if
/// `anonymous`.
#[derive(Clone, Debug)]
pub struct Rule {
    pub repositories: RepoPattern,
    pub users: Vec<String>,
    pub groups: Vec<String>,
    pub anonymous: bool,
    pub actions: Actions,
}

#[derive(Clone, Debug)]
pub struct Policy {
    /// No authentication configured: everyone may do everything.
    open: bool,
    admins: BTreeSet<String>,
    /// user -> the groups they are a member of.
    member_of: BTreeMap<String, BTreeSet<String>>,
    rules: Option<Vec<Rule>>,
}

impl Policy {
    /// `admins` may do every action everywhere and use the admin API; `groups` maps a group to
    /// its members. `rules: None` means no rules were configured: every authenticated user may
    /// pull, push and delete everything and anonymous callers nothing (what Distribution does
    /// with htpasswd). `Some(rules)`: only what the rules grant.
    pub fn new(admins: Vec<String>, groups: BTreeMap<String, Vec<String>>, rules: Option<Vec<Rule>>) -> Self {
        let mut member_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (group, members) in groups {
            for m in members {
                member_of.entry(m).or_default().insert(group.clone());
            }
        }
        Policy { open: false, admins: admins.into_iter().collect(), member_of, rules }
    }

    /// No authentication configured: everyone, anonymous callers included, may do everything
    /// and is an admin.
    pub fn open() -> Self {
        Policy { open: true, admins: BTreeSet::new(), member_of: BTreeMap::new(), rules: None }
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    fn applies(&self, rule: &Rule, who: &Identity) -> bool {
        if rule.anonymous {
            return true;
        }
        let Some(user) = &who.user else { return false };
        rule.users.iter().any(|u| u == "*" || u == user)
            || self.member_of.get(user).is_some_and(|gs| rule.groups.iter().any(|g| gs.contains(g)))
    }

    /// What `who` may do to `repo`.
    pub fn granted(&self, who: &Identity, repo: &RepoName) -> Actions {
        if self.is_admin(who) {
            return Actions::ALL;
        }
        match &self.rules {
            None if who.user.is_some() => Actions::ALL,
            None => Actions::NONE,
            Some(rules) => rules
                .iter()
                .filter(|r| r.repositories.matches(repo) && self.applies(r, who))
                .fold(Actions::NONE, |acc, r| acc.union(r.actions)),
        }
    }

    pub fn allows(&self, who: &Identity, repo: &RepoName, action: Action) -> bool {
        self.granted(who, repo).contains(action)
    }

    pub fn is_admin(&self, who: &Identity) -> bool {
        self.open || who.user.as_ref().is_some_and(|u| self.admins.contains(u))
    }

    /// Whether `who` may list repositories at all: admins and authenticated users, and anonymous
    /// callers when some rule lets them pull. (Which names the listing then shows is the
    /// server's business.)
    pub fn may_list_catalog(&self, who: &Identity) -> bool {
        self.is_admin(who)
            || who.user.is_some()
            || self.rules.as_ref().is_some_and(|rs| rs.iter().any(|r| r.anonymous && r.actions.contains(Action::Pull)))
    }

    /// The `access` claim of a token for `who` asking for `scopes`: each requested scope cut
    /// down to what is granted, and left out when nothing is (the token specification: a token
    /// holds what was asked for and allowed, and asking for more is not an error).
    pub fn grant(&self, who: &Identity, scopes: &[Scope]) -> Vec<Access> {
        let mut out: Vec<Access> = Vec::new();
        for s in scopes {
            let access = match &s.resource {
                Resource::Repository(name) => {
                    let actions = s.actions.intersection(self.granted(who, name));
                    (!actions.is_empty()).then(|| Access::repository(name, actions))
                }
                Resource::Catalog => (!s.actions.is_empty() && self.may_list_catalog(who)).then(Access::catalog),
            };
            let Some(access) = access else { continue };
            // Two scopes for one repository become one entry.
            match out.iter_mut().find(|a| a.typ == access.typ && a.name == access.name) {
                Some(a) => {
                    let merged = Actions::parse_lenient(a.actions.iter().chain(&access.actions).map(String::as_str));
                    if a.typ == "repository" {
                        a.actions = merged.words();
                    }
                }
                None => out.push(access),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AuthMethod;
    use crate::scope::parse_scopes;

    fn rule(pattern: &str, users: &[&str], groups: &[&str], anonymous: bool, actions: &[&str]) -> Rule {
        Rule {
            repositories: pattern.parse().expect("pattern"),
            users: users.iter().map(|s| (*s).to_owned()).collect(),
            groups: groups.iter().map(|s| (*s).to_owned()).collect(),
            anonymous,
            actions: Actions::parse(actions.iter().copied()).expect("actions"),
        }
    }

    fn name(s: &str) -> RepoName {
        s.parse().expect("name")
    }

    fn user(u: &str) -> Identity {
        Identity::user(u, AuthMethod::Password)
    }

    fn policy() -> Policy {
        let groups = BTreeMap::from([("team-a".to_owned(), vec!["alice".to_owned(), "bob".to_owned()]), ("ops".to_owned(), vec!["carol".to_owned()])]);
        Policy::new(
            vec!["root".to_owned()],
            groups,
            Some(vec![
                rule("team-a/**", &[], &["team-a"], false, &["pull", "push"]),
                rule("team-a/**", &["bob"], &[], false, &["delete"]),
                rule("library/*", &["*"], &[], false, &["pull"]),
                rule("public/**", &[], &[], true, &["pull"]),
                rule("**", &[], &["ops"], false, &["pull"]),
            ]),
        )
    }

    #[test]
    fn matrix_with_rules() {
        let p = policy();
        let anon = Identity::anonymous();
        let cases: &[(&Identity, &str, &str)] = &[
            (&user("alice"), "team-a/app", "pull,push"),
            (&user("alice"), "team-a", "pull,push"),
            (&user("bob"), "team-a/x/y", "pull,push,delete"),
            (&user("alice"), "team-b/app", ""),
            (&user("alice"), "library/ubuntu", "pull"),
            (&user("alice"), "library/a/b", ""),
            (&user("dave"), "library/ubuntu", "pull"),
            (&user("dave"), "team-a/app", ""),
            (&user("dave"), "public/x", "pull"),
            (&anon, "public/x", "pull"),
            (&anon, "library/ubuntu", ""),
            (&anon, "team-a/app", ""),
            (&user("carol"), "team-b/app", "pull"),
            (&user("carol"), "team-a/app", "pull"),
            (&user("root"), "anything/at/all", "pull,push,delete"),
        ];
        for (who, repo, want) in cases {
            assert_eq!(p.granted(who, &name(repo)).to_string(), *want, "{who:?} on {repo}");
        }
        assert!(p.allows(&user("bob"), &name("team-a/app"), Action::Delete));
        assert!(!p.allows(&user("alice"), &name("team-a/app"), Action::Delete));
        assert!(p.is_admin(&user("root")));
        assert!(!p.is_admin(&user("alice")));
        assert!(!p.is_admin(&anon));
        assert!(p.may_list_catalog(&user("dave")));
        assert!(p.may_list_catalog(&anon), "a rule grants anonymous pull");
    }

    #[test]
    fn no_rules_means_authenticated_users_may_do_everything() {
        let p = Policy::new(vec![], BTreeMap::new(), None);
        assert_eq!(p.granted(&user("x"), &name("a/b")), Actions::ALL);
        assert_eq!(p.granted(&Identity::anonymous(), &name("a/b")), Actions::NONE);
        assert!(!p.is_admin(&user("x")));
        assert!(p.may_list_catalog(&user("x")));
        assert!(!p.may_list_catalog(&Identity::anonymous()));

        // Some(empty): nothing granted to anybody but admins.
        let p = Policy::new(vec!["root".into()], BTreeMap::new(), Some(vec![]));
        assert_eq!(p.granted(&user("x"), &name("a")), Actions::NONE);
        assert_eq!(p.granted(&user("root"), &name("a")), Actions::ALL);
        assert!(!p.may_list_catalog(&Identity::anonymous()));
    }

    #[test]
    fn open_policy_allows_everyone() {
        let p = Policy::open();
        assert_eq!(p.granted(&Identity::anonymous(), &name("a")), Actions::ALL);
        assert!(p.is_admin(&Identity::anonymous()));
        assert!(p.may_list_catalog(&Identity::anonymous()));
    }

    #[test]
    fn grant_cuts_scopes_to_what_is_allowed() {
        let p = policy();
        let scopes = parse_scopes(["repository:team-a/app:pull,push,delete repository:team-b/x:pull registry:catalog:* repository:team-a/app:pull"]);
        let got = p.grant(&user("alice"), &scopes);
        let got: Vec<(String, String, Vec<String>)> = got.into_iter().map(|a| (a.typ, a.name, a.actions)).collect();
        assert_eq!(
            got,
            [
                ("repository".to_owned(), "team-a/app".to_owned(), vec!["pull".to_owned(), "push".to_owned()]),
                ("registry".to_owned(), "catalog".to_owned(), vec!["*".to_owned()]),
            ]
        );
        assert!(p.grant(&Identity::anonymous(), &parse_scopes(["repository:team-a/app:pull"])).is_empty());
    }
}
