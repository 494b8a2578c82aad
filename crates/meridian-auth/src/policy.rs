//! Roles, permissions and the one policy table.

use serde::{Deserialize, Serialize};

/// What a user or credential is, in the group's organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Group operations: users, sites, tokens, grants; sees every site.
    Admin,
    /// Reads the studies granted to them (by eligibility/assignment later).
    Radiologist,
    /// Technologist or coordinator of one site: that site's studies only.
    Site,
    /// Reads final reports of their own orders (reports arrive later).
    Referrer,
    /// The audit log only.
    Auditor,
    /// Gateways and AI engines: store and read, within their site if scoped.
    Service,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Admin,
        Role::Radiologist,
        Role::Site,
        Role::Referrer,
        Role::Auditor,
        Role::Service,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Radiologist => "radiologist",
            Role::Site => "site",
            Role::Referrer => "referrer",
            Role::Auditor => "auditor",
            Role::Service => "service",
        }
    }

    /// Roles that only make sense bound to one site.
    pub fn needs_site(self) -> bool {
        matches!(self, Role::Site | Role::Referrer)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role {s:?} (admin, radiologist, site, referrer, auditor, service)")
            })
    }
}

/// What a route or DIMSE service requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Permission {
    /// Anyone, signed in or not (health, metrics, login page, viewer assets).
    Public,
    /// Any signed-in principal (who am I, sign out).
    Authenticated,
    /// Search and retrieve images and their metadata (within the principal's scope).
    ImagesRead,
    /// Store images (into the principal's site).
    ImagesStore,
    /// Search and export the audit log.
    AuditRead,
    /// Users, tokens, sites, AE titles, grants.
    Admin,
    /// A reader's own worklist: see, claim, open, release (radiologists).
    Worklist,
    /// Place and read orders (within the principal's site).
    Orders,
    /// The coordinators' queue: unmatched studies and orders, manual match.
    Coordinate,
    /// The operations view of every open study.
    Operations,
}

impl Permission {
    pub const ALL: [Permission; 10] = [
        Permission::Public,
        Permission::Authenticated,
        Permission::ImagesRead,
        Permission::ImagesStore,
        Permission::AuditRead,
        Permission::Admin,
        Permission::Worklist,
        Permission::Orders,
        Permission::Coordinate,
        Permission::Operations,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Public => "public",
            Permission::Authenticated => "authenticated",
            Permission::ImagesRead => "images-read",
            Permission::ImagesStore => "images-store",
            Permission::AuditRead => "audit-read",
            Permission::Admin => "admin",
            Permission::Worklist => "worklist",
            Permission::Orders => "orders",
            Permission::Coordinate => "coordinate",
            Permission::Operations => "operations",
        }
    }
}

/// The policy table: which role holds which permission. `Public` and
/// `Authenticated` are implied for every role.
pub const POLICY: &[(Role, &[Permission])] = &[
    (
        Role::Admin,
        &[
            Permission::ImagesRead,
            Permission::ImagesStore,
            Permission::AuditRead,
            Permission::Admin,
            Permission::Orders,
            Permission::Coordinate,
            Permission::Operations,
        ],
    ),
    (
        Role::Radiologist,
        &[Permission::ImagesRead, Permission::Worklist],
    ),
    (
        Role::Site,
        &[
            Permission::ImagesRead,
            Permission::ImagesStore,
            Permission::Orders,
            Permission::Coordinate,
        ],
    ),
    (Role::Referrer, &[]),
    (Role::Auditor, &[Permission::AuditRead]),
    (
        Role::Service,
        &[
            Permission::ImagesRead,
            Permission::ImagesStore,
            Permission::Orders,
        ],
    ),
];

/// Whether `role` holds `perm`.
pub fn allows(role: Role, perm: Permission) -> bool {
    match perm {
        Permission::Public | Permission::Authenticated => true,
        _ => POLICY
            .iter()
            .find(|(r, _)| *r == role)
            .is_some_and(|(_, ps)| ps.contains(&perm)),
    }
}

/// How the principal authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrincipalKind {
    /// A person with a browser session.
    User,
    /// An API token (`Authorization: Bearer`).
    Token,
    /// A DICOM application entity registered to a site.
    Ae,
}

/// Who is acting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// User name, token name (`token:ID`) or calling AE title (`ae:TITLE`).
    pub name: String,
    pub kind: PrincipalKind,
    pub role: Role,
    /// The site (tenant) the principal belongs to, if any.
    pub site: Option<String>,
}

/// Which studies a principal may see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    /// Studies of one site.
    Site(String),
    /// Studies granted to this user.
    Granted(String),
    /// Nothing.
    Nothing,
}

impl Principal {
    /// The data scope of this principal for image access.
    pub fn scope(&self) -> Scope {
        match (self.role, &self.site) {
            (Role::Admin, _) => Scope::All,
            (Role::Service, None) => Scope::All,
            (Role::Service | Role::Site, Some(s)) => Scope::Site(s.clone()),
            (Role::Radiologist, _) => Scope::Granted(self.name.clone()),
            _ => Scope::Nothing,
        }
    }

    pub fn may(&self, perm: Permission) -> bool {
        allows(self.role, perm)
    }

    /// The site a store by this principal lands in.
    pub fn store_site(&self) -> Option<&str> {
        if self.may(Permission::ImagesStore) {
            self.site.as_deref()
        } else {
            None
        }
    }
}

/// Whether `study_site` (the site of an existing study) is visible in `scope`.
/// Grants are checked by the store, which holds them.
pub fn site_visible(scope: &Scope, study_site: Option<&str>) -> bool {
    match scope {
        Scope::All => true,
        Scope::Site(s) => study_site == Some(s.as_str()),
        Scope::Granted(_) | Scope::Nothing => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(role: Role, site: Option<&str>) -> Principal {
        Principal {
            name: "u".into(),
            kind: PrincipalKind::User,
            role,
            site: site.map(str::to_owned),
        }
    }

    #[test]
    fn separation_of_duties() {
        assert!(allows(Role::Auditor, Permission::AuditRead));
        assert!(!allows(Role::Auditor, Permission::ImagesRead));
        assert!(!allows(Role::Radiologist, Permission::ImagesStore));
        assert!(!allows(Role::Radiologist, Permission::AuditRead));
        assert!(!allows(Role::Site, Permission::Admin));
        assert!(!allows(Role::Referrer, Permission::ImagesRead));
        assert!(!allows(Role::Service, Permission::Admin));
        for r in Role::ALL {
            assert!(allows(r, Permission::Public));
            assert!(allows(r, Permission::Authenticated));
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
    }

    #[test]
    fn scopes() {
        assert_eq!(p(Role::Admin, Some("a")).scope(), Scope::All);
        assert_eq!(p(Role::Site, Some("a")).scope(), Scope::Site("a".into()));
        assert_eq!(p(Role::Site, None).scope(), Scope::Nothing);
        assert_eq!(p(Role::Service, None).scope(), Scope::All);
        assert_eq!(p(Role::Service, Some("b")).scope(), Scope::Site("b".into()));
        assert_eq!(
            p(Role::Radiologist, None).scope(),
            Scope::Granted("u".into())
        );
        assert_eq!(p(Role::Auditor, None).scope(), Scope::Nothing);
        assert!(site_visible(&Scope::Site("a".into()), Some("a")));
        assert!(!site_visible(&Scope::Site("a".into()), Some("b")));
        assert!(!site_visible(&Scope::Site("a".into()), None));
        assert_eq!(p(Role::Site, Some("a")).store_site(), Some("a"));
        assert_eq!(p(Role::Radiologist, Some("a")).store_site(), None);
    }
}
