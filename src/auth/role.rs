//! Roles, what each may do (permissions) and what each may see (a visibility per column class).
//! The README's permissions table is this file in prose; a test keeps the two in step.

use serde::{Deserialize, Serialize};

use crate::pipeline::spec::ColumnClass;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    Manager,
    Billing,
    Analyst,
    Viewer,
}

/// Something a caller may be allowed to do. Every HTTP route and the wire endpoint name one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Permission {
    /// Run SQL of one's own (the SQL API, the wire endpoint, the CLI against a server).
    RunSql,
    /// List and run saved queries, list tables and their columns.
    ReadCatalog,
    /// See pipelines and their runs.
    ViewPipelines,
    /// Start pipeline runs.
    RunPipelines,
    /// Read the query log and the metrics.
    ViewOperations,
    /// Open dashboards and ask the metrics views (every role: panels run as the viewer's role).
    ViewDashboards,
    /// Manage users, API keys and every user's sessions; read the audit log; privacy requests.
    Administer,
}

/// How a column of one class reaches a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    Clear,
    /// Replaced by a keyed hash: still joins and counts, no longer identifies.
    Pseudonymised,
    /// Replaced by NULL.
    Hidden,
}

pub const ALL_ROLES: [Role; 5] = [Role::Admin, Role::Manager, Role::Billing, Role::Analyst, Role::Viewer];

impl Role {
    pub fn parse(name: &str) -> Option<Role> {
        ALL_ROLES.into_iter().find(|r| r.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Manager => "manager",
            Role::Billing => "billing",
            Role::Analyst => "analyst",
            Role::Viewer => "viewer",
        }
    }

    pub fn allows(self, permission: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Admin => true,
            Role::Manager => matches!(
                permission,
                RunSql | ReadCatalog | ViewPipelines | RunPipelines | ViewOperations | ViewDashboards
            ),
            Role::Billing => matches!(permission, RunSql | ReadCatalog | ViewDashboards),
            Role::Analyst => matches!(permission, RunSql | ReadCatalog | ViewPipelines | ViewDashboards),
            Role::Viewer => matches!(permission, ReadCatalog | ViewDashboards),
        }
    }

    /// Whether logging in as this role needs a second factor.
    pub fn requires_mfa(self) -> bool {
        self == Role::Admin
    }

    pub fn sees(self, class: ColumnClass) -> Visibility {
        use ColumnClass::*;
        match (self, class) {
            (_, Secret) => Visibility::Hidden,
            (Role::Admin, _) => Visibility::Clear,
            (Role::Manager | Role::Billing, Phi) => Visibility::Hidden,
            (Role::Manager | Role::Billing, _) => Visibility::Clear,
            (Role::Analyst | Role::Viewer, Pii | Phi) => Visibility::Hidden,
            (Role::Analyst | Role::Viewer, Id) => Visibility::Pseudonymised,
            (Role::Analyst | Role::Viewer, Dim | Fin) => Visibility::Clear,
        }
    }

    /// Of `a` and `b`, the one that sees less: `a` when it sees no class more than `b` does, else
    /// `b` (the roles' views are ordered: admin, then manager and billing, then analyst and viewer).
    pub fn seeing_less(a: Role, b: Role) -> Role {
        let rank = |v: Visibility| match v {
            Visibility::Hidden => 0,
            Visibility::Pseudonymised => 1,
            Visibility::Clear => 2,
        };
        let classes = [ColumnClass::Id, ColumnClass::Dim, ColumnClass::Pii, ColumnClass::Phi, ColumnClass::Fin];
        if classes.iter().all(|c| rank(a.sees(*c)) <= rank(b.sees(*c))) { a } else { b }
    }

    /// Whether this role sees every column as it is stored.
    pub fn sees_everything(self) -> bool {
        self == Role::Admin
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn of_two_roles_the_one_seeing_less_sees_no_class_more_than_either() {
        let classes = [ColumnClass::Id, ColumnClass::Dim, ColumnClass::Pii, ColumnClass::Phi, ColumnClass::Fin];
        let rank = |v: Visibility| {
            [Visibility::Hidden, Visibility::Pseudonymised, Visibility::Clear].iter().position(|x| *x == v)
        };
        for a in ALL_ROLES {
            for b in ALL_ROLES {
                let less = Role::seeing_less(a, b);
                for class in classes {
                    assert!(rank(less.sees(class)) <= rank(a.sees(class)), "{a} {b} {class}");
                    assert!(rank(less.sees(class)) <= rank(b.sees(class)), "{a} {b} {class}");
                }
            }
        }
        assert_eq!(Role::seeing_less(Role::Manager, Role::Analyst), Role::Analyst);
        assert_eq!(Role::seeing_less(Role::Admin, Role::Billing), Role::Billing);
    }

    /// The README's tables, row by row; a change to either side fails here.
    #[test]
    fn the_readme_tables_match_the_code() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
        let mark = |b: bool| if b { "✓" } else { "–" };
        let rows = [
            ("run SQL", Permission::RunSql),
            ("saved queries, tables", Permission::ReadCatalog),
            ("view pipelines", Permission::ViewPipelines),
            ("run pipelines", Permission::RunPipelines),
            ("query log, metrics", Permission::ViewOperations),
            ("dashboards, metrics views", Permission::ViewDashboards),
            ("users, keys, audit, privacy", Permission::Administer),
        ];
        for (label, permission) in rows {
            let cells: Vec<&str> = ALL_ROLES.iter().map(|r| mark(r.allows(permission))).collect();
            let line = format!("| {label} | {} |", cells.join(" | "));
            assert!(readme.contains(&line), "README lacks the row {line:?}");
        }
        let word = |v: Visibility| match v {
            Visibility::Clear => "clear",
            Visibility::Pseudonymised => "pseudonymised",
            Visibility::Hidden => "hidden",
        };
        for class in [ColumnClass::Id, ColumnClass::Dim, ColumnClass::Pii, ColumnClass::Phi, ColumnClass::Fin] {
            let cells: Vec<&str> = ALL_ROLES.iter().map(|r| word(r.sees(class))).collect();
            let line = format!("| {} | {} |", class, cells.join(" | "));
            assert!(readme.contains(&line), "README lacks the row {line:?}");
        }
    }
}
