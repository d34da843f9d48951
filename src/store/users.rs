//! Accounts and revoked tokens: the [`UserStore`] the user actors write through, and the reads
//! sign-in needs.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use convene_actors::StoreError;
use convene_actors::model::{DomainEvent, NewUser, Role, User, topics};
use convene_actors::store::UserStore;
use serde_json::{Value, json};
use sqlx::types::Json;

use super::{Db, SqlStore, corrupt, unavailable, write_error};

const USER_BY_EMAIL: &str = "SELECT id, email, password_hash, name, role, profile, version, created_at, updated_at FROM users WHERE email = $1";
const USER_BY_ID: &str = "SELECT id, email, password_hash, name, role, profile, version, created_at, updated_at FROM users WHERE id = $1";

#[derive(sqlx::FromRow)]
struct UserRow {
    id: i64,
    email: String,
    password_hash: String,
    name: String,
    role: String,
    profile: Json<Value>,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl UserRow {
    fn into_user(self) -> Result<User, StoreError> {
        Ok(User {
            id: self.id,
            email: self.email,
            name: self.name,
            role: Role::parse(&self.role).ok_or_else(|| corrupt("users.role", &self.role))?,
            profile: self.profile.0,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

impl SqlStore {
    /// The account with this e-mail address and its password hash.
    pub async fn credentials(&self, email: &str) -> Result<Option<(User, String)>, StoreError> {
        let row: Option<UserRow> = on_pool!(self, read, pool => {
            sqlx::query_as(USER_BY_EMAIL).bind(email).fetch_optional(pool).await
        })
        .map_err(unavailable)?;
        row.map(|r| {
            let hash = r.password_hash.clone();
            r.into_user().map(|u| (u, hash))
        })
        .transpose()
    }

    /// The tokens revoked that expire after `now`, with their expiry.
    pub async fn revocations(
        &self,
        now: DateTime<Utc>,
    ) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        on_pool!(self, read, pool => {
            sqlx::query_as("SELECT jti, expires_at FROM token_blacklist WHERE expires_at > $1")
                .bind(now)
                .fetch_all(pool)
                .await
        })
        .map_err(unavailable)
    }

    /// Gives the account with this e-mail address a role; `false` when there is no such account.
    pub async fn grant_role(&self, email: &str, role: Role) -> Result<bool, StoreError> {
        let now = Utc::now();
        on_pool!(self, write, pool => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            let row: Option<(i64,)> = sqlx::query_as(
                "UPDATE users SET role = $1, version = version + 1, updated_at = $2 WHERE email = $3 RETURNING id",
            )
            .bind(role.as_str())
            .bind(now)
            .bind(email)
            .fetch_optional(&mut *tx)
            .await
            .map_err(unavailable)?;
            let Some((id,)) = row else { return Ok(false) };
            let event = DomainEvent::new(
                topics::USER_UPDATED,
                format!("user/{id}"),
                json!({"user_id": id, "role": role.as_str()}),
                now,
            );
            write_outbox!(self, tx, [&event]);
            tx.commit().await.map_err(unavailable)?;
            self.outbox_written();
            Ok(true)
        })
    }
}

#[async_trait]
impl UserStore for SqlStore {
    async fn create_user(&self, user: NewUser) -> Result<User, StoreError> {
        let now = Utc::now();
        on_pool!(self, write, pool => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            let row: UserRow = sqlx::query_as(
                "INSERT INTO users (email, password_hash, name, role, profile, version, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, 1, $6, $6) \
                 RETURNING id, email, password_hash, name, role, profile, version, created_at, updated_at",
            )
            .bind(&user.email)
            .bind(&user.password_hash)
            .bind(&user.name)
            .bind(user.role.as_str())
            .bind(Json(json!({})))
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| write_error(e, || StoreError::Duplicate("email".into())))?;
            let user = row.into_user()?;
            let event = DomainEvent::new(
                topics::USER_CREATED,
                format!("user/{}", user.id),
                json!({"user_id": user.id, "email": user.email, "name": user.name}),
                now,
            );
            write_outbox!(self, tx, [&event]);
            tx.commit().await.map_err(unavailable)?;
            self.outbox_written();
            Ok(user)
        })
    }

    async fn load_user(&self, id: i64) -> Result<Option<User>, StoreError> {
        let row: Option<UserRow> = on_pool!(self, read, pool => {
            sqlx::query_as(USER_BY_ID).bind(id).fetch_optional(pool).await
        })
        .map_err(unavailable)?;
        row.map(UserRow::into_user).transpose()
    }

    async fn save_user(
        &self,
        user: &User,
        expected_version: i64,
        events: &[DomainEvent],
    ) -> Result<(), StoreError> {
        on_pool!(self, write, pool => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            let done = sqlx::query(
                "UPDATE users SET name = $1, profile = $2, version = $3, updated_at = $4 WHERE id = $5 AND version = $6",
            )
            .bind(&user.name)
            .bind(Json(&user.profile))
            .bind(user.version)
            .bind(user.updated_at)
            .bind(user.id)
            .bind(expected_version)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            if done.rows_affected() != 1 {
                return Err(StoreError::Conflict);
            }
            write_outbox!(self, tx, events.iter());
            tx.commit().await.map_err(unavailable)?;
            self.outbox_written();
            Ok(())
        })
    }

    async fn revoke_token(&self, jti: &str, expires_at: DateTime<Utc>) -> Result<(), StoreError> {
        on_pool!(self, write, pool => {
            let mut tx = pool.begin().await.map_err(unavailable)?;
            sqlx::query("INSERT INTO token_blacklist (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING")
                .bind(jti)
                .bind(expires_at)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            // Expired tokens are refused on their own; their entries are no longer needed.
            sqlx::query("DELETE FROM token_blacklist WHERE expires_at < $1")
                .bind(Utc::now())
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)
        })
    }
}
