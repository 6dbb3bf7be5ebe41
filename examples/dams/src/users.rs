//! Users: names, Argon2 password hashes and permissions, from a TOML file or flags.
//!
//! ```toml
//! [[user]]
//! name = "editor"
//! password_hash = "$argon2id$v=19$m=19456,t=2,p=1$…"   # from `dams hash-password`
//! permissions = ["view", "add"]
//! ```
//!
//! Permissions: `view` — get new-dam notifications (the notifications WebSocket); `add` — add
//! dams. Anyone may read the inventory.

use std::collections::HashMap;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use serde::Deserialize;

/// What a user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Get new-dam notifications.
    View,
    /// Add dams.
    Add,
}

impl std::str::FromStr for Permission {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "view" => Ok(Permission::View),
            "add" => Ok(Permission::Add),
            other => Err(format!(
                "unknown permission {other:?}: use \"view\" or \"add\""
            )),
        }
    }
}

/// One user.
#[derive(Clone, Debug, Deserialize)]
pub struct User {
    /// The login name.
    pub name: String,
    /// An Argon2 PHC string.
    pub password_hash: String,
    /// What the user may do.
    #[serde(default)]
    pub permissions: Vec<Permission>,
}

impl User {
    /// Whether the user has `p`.
    pub fn can(&self, p: Permission) -> bool {
        self.permissions.contains(&p)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    user: Vec<User>,
}

/// Every user, by name.
#[derive(Clone, Debug, Default)]
pub struct Users {
    by_name: HashMap<String, User>,
    /// Verified against when the name is unknown, so a wrong name costs as long as a wrong
    /// password (no timing hint about which names exist).
    decoy: String,
}

fn check_name(name: &str) -> Result<(), String> {
    if (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
    {
        Ok(())
    } else {
        Err(format!(
            "user name {name:?} is invalid: use 1 to 64 letters, digits, '-', '_', '.' or '@'"
        ))
    }
}

impl Users {
    /// Users from a list; names must be unique and hashes valid PHC strings.
    pub fn new(list: Vec<User>) -> Result<Users, String> {
        let mut by_name = HashMap::new();
        for u in list {
            check_name(&u.name)?;
            PasswordHash::new(&u.password_hash).map_err(|e| {
                format!(
                    "user {:?}: password_hash is not an Argon2 PHC string ({e}); make one with `dams hash-password`",
                    u.name
                )
            })?;
            if by_name.insert(u.name.clone(), u.clone()).is_some() {
                return Err(format!("user {:?} is listed twice", u.name));
            }
        }
        Ok(Users {
            by_name,
            decoy: hash_password("decoy password, never matches")?,
        })
    }

    /// Users from a TOML file's text (see the module docs).
    pub fn from_toml(text: &str) -> Result<Users, String> {
        Users::new(Users::list_from_toml(text)?)
    }

    /// The users a TOML file's text lists, unchecked (see [`Users::new`]).
    pub fn list_from_toml(text: &str) -> Result<Vec<User>, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        Ok(file.user)
    }

    /// A user from a flag: `NAME:PERMISSIONS:HASH`, permissions comma-separated (may be empty),
    /// e.g. `ann:view,add:$argon2id$v=19$…`.
    pub fn parse_flag(spec: &str) -> Result<User, String> {
        let mut parts = spec.splitn(3, ':');
        let (Some(name), Some(perms), Some(hash)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err("expected NAME:PERMISSIONS:HASH, e.g. ann:view,add:$argon2id$…".into());
        };
        let permissions = perms
            .split(',')
            .filter(|p| !p.is_empty())
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        Ok(User {
            name: name.to_owned(),
            password_hash: hash.to_owned(),
            permissions,
        })
    }

    /// The user called `name`.
    pub fn get(&self, name: &str) -> Option<&User> {
        self.by_name.get(name)
    }

    /// The user if `password` is theirs. Slow on purpose (Argon2): call it off the async
    /// threads.
    pub fn verify(&self, name: &str, password: &str) -> Option<&User> {
        let (user, hash) = match self.by_name.get(name) {
            Some(u) => (Some(u), u.password_hash.as_str()),
            None => (None, self.decoy.as_str()),
        };
        let parsed = PasswordHash::new(hash).ok()?;
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        user.filter(|_| ok)
    }
}

/// An Argon2id hash of `password` in PHC form, with a fresh random salt and the default cost.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("could not hash the password: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_files_and_verification() {
        let hash = hash_password("s3cret").unwrap();
        let u = Users::parse_flag(&format!("ann:view,add:{hash}")).unwrap();
        assert!(u.can(Permission::Add) && u.can(Permission::View));
        let nobody = Users::parse_flag(&format!("bob::{hash}")).unwrap();
        assert!(nobody.permissions.is_empty());
        assert!(Users::parse_flag("ann:view").is_err());
        assert!(Users::parse_flag(&format!("ann:fly:{hash}")).is_err());
        let users = Users::new(vec![u, nobody]).unwrap();
        assert_eq!(
            users.verify("ann", "s3cret").map(|u| &u.name[..]),
            Some("ann")
        );
        assert!(users.verify("ann", "wrong").is_none());
        assert!(users.verify("nobody", "s3cret").is_none());
        let toml = format!(
            "[[user]]\nname = \"cat\"\npassword_hash = \"{hash}\"\npermissions = [\"view\"]\n"
        );
        let users = Users::from_toml(&toml).unwrap();
        assert!(users.get("cat").unwrap().can(Permission::View));
        assert!(!users.get("cat").unwrap().can(Permission::Add));
        assert!(Users::from_toml("[[user]]\nname = \"x\"\npassword_hash = \"plain\"\n").is_err());
        assert!(
            Users::from_toml(&format!("{toml}{toml}")).is_err(),
            "duplicate"
        );
    }
}
