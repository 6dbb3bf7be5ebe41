//! The dam inventory: pages, login, the add form, and the notifications consumer. `main.rs`
//! parses flags and serves it; the tests mount it in-process.
//!
//! Routes (the whole of them in `README.md`):
//! - `GET /dams/` — the inventory: a table and a plot of locations. Anyone may read it.
//! - `GET|POST /dams/add/` — the add form; needs a login with the `add` permission. Invalid
//!   input re-shows the form with an error beside each bad field and stores nothing; so does a
//!   full inventory (`--max-dams`). On success the handler `group_send`s
//!   `{"type":"dam.notification","message":"New Dam","name":…}` to the `notifications` group.
//! - `GET|POST /accounts/login/`, `POST /accounts/logout/` — cookie sessions stored in SQLite.
//! - WebSocket `/dams/notifications/ws/` — only for a logged-in user with the `view` permission
//!   (anything else is refused with 403 by the endpoint's authentication hook); relays the
//!   notifications to the page, which shows a "refresh?" dialog.
//! - WebSocket `/dams/report/ws/` — same admission; relays the inventory report, which a
//!   background worker recomputes after each add (the add only sends it the job: [`report`]).

pub mod dam;
pub mod db;
pub mod report;
pub mod users;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use axum::Router;
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use minijinja::{Environment, context};
use serde::Deserialize;
use serde_json::json;
use switchboard::endpoint::Authenticate;
use switchboard::http::StatusCode as Status;
use switchboard::{
    Connection, ConnectionConfig, Consumer, Endpoint, Error, Frame, GroupName, Layer, Origins,
    Refusal, Result, Scope,
};

use self::dam::{DamForm, OWNERS};
use self::db::{Added, Db, Session};
use self::users::{Permission, User, Users};

/// The group every notifications socket joins.
pub const NOTIFICATIONS: &str = "notifications";

/// [`NOTIFICATIONS`] as a group name, validated once.
fn notifications() -> &'static GroupName {
    static GROUP: std::sync::LazyLock<GroupName> = std::sync::LazyLock::new(|| {
        GroupName::new(NOTIFICATIONS).unwrap_or_else(|e| unreachable!("{e}")) // ok: a valid literal
    });
    &GROUP
}

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "sessionid";

/// How the app is set up.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Adding past this many dams is refused.
    pub max_dams: usize,
    /// How long a login lasts.
    pub session_ttl: Duration,
    /// Mark the session cookie `Secure` (serve over HTTPS).
    pub secure_cookies: bool,
    /// Which browser origins may open the WebSocket.
    pub origins: Origins,
    /// Whether clients that send no `Origin` (scripts) may connect; they still need a session.
    pub allow_missing_origin: bool,
    /// Per-connection limits.
    pub connection: ConnectionConfig,
    /// Password checks that may run at once. Each is Argon2 — 19 MiB and tens of milliseconds
    /// of CPU, run for unknown users too — and anyone may POST the login form, so a login
    /// that finds no slot free is answered 503 at once rather than queued. Clones of these
    /// settings share the slots.
    pub password_checks: Arc<Semaphore>,
    /// Drains the WebSocket connections on shutdown (see `example_support::serve`).
    pub shutdown: switchboard::Shutdown,
}

/// How many password checks may run at once by default.
pub const DEFAULT_PASSWORD_CHECKS: usize = 4;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_dams: 50,
            session_ttl: Duration::from_secs(14 * 24 * 3600),
            secure_cookies: false,
            origins: Origins::SameHost,
            allow_missing_origin: true,
            connection: ConnectionConfig::default(),
            password_checks: Arc::new(Semaphore::new(DEFAULT_PASSWORD_CHECKS)),
            shutdown: switchboard::Shutdown::new(),
        }
    }
}

#[derive(Clone)]
struct AppState {
    db: Db,
    layer: Layer,
    users: Arc<Users>,
    settings: Arc<Settings>,
    pages: Arc<Environment<'static>>,
}

fn pages() -> Environment<'static> {
    let mut env = Environment::new();
    for (name, source) in [
        ("base.html", include_str!("../templates/base.html")),
        ("home.html", include_str!("../templates/home.html")),
        ("add.html", include_str!("../templates/add.html")),
        ("login.html", include_str!("../templates/login.html")),
        ("message.html", include_str!("../templates/message.html")),
    ] {
        // The templates are part of the program; the tests render every one of them.
        if let Err(e) = env.add_template(name, source) {
            tracing::error!(template = name, error = %e, "bad template");
        }
    }
    env
}

/// Who is asking: a session and its user, if logged in.
#[derive(Default)]
struct Visitor {
    session: Option<Session>,
    user: Option<User>,
}

impl Visitor {
    fn can(&self, p: Permission) -> bool {
        self.user.as_ref().is_some_and(|u| u.can(p))
    }

    fn name(&self) -> Option<&str> {
        self.user.as_ref().map(|u| u.name.as_str())
    }

    fn csrf(&self) -> &str {
        self.session.as_ref().map_or("", |s| s.csrf_token.as_str())
    }
}

/// A session id as we issue them: 64 lowercase hex digits. Anything else is not looked up.
fn session_id(raw: Option<String>) -> Option<String> {
    raw.filter(|s| {
        s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn cookie_from(headers: &HeaderMap) -> Option<String> {
    let raw = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(std::result::Result::ok)
        .find(|c| c.name() == SESSION_COOKIE)
        .map(|c| c.value().to_owned());
    session_id(raw)
}

/// The visitor behind `headers`' session cookie. A session whose user is no longer configured
/// counts as logged out.
async fn visitor(st: &AppState, headers: &HeaderMap) -> std::result::Result<Visitor, db::DbError> {
    let Some(id) = cookie_from(headers) else {
        return Ok(Visitor::default());
    };
    let Some(session) = st.db.session(id).await? else {
        return Ok(Visitor::default());
    };
    let user = st.users.get(&session.username).cloned();
    Ok(Visitor {
        session: user.as_ref().map(|_| session),
        user,
    })
}

fn render(st: &AppState, status: StatusCode, name: &str, ctx: minijinja::Value) -> Response {
    match st.pages.get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(template = name, error = %e, "rendering failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not render the page",
            )
                .into_response()
        }
    }
}

fn message(st: &AppState, v: &Visitor, status: StatusCode, title: &str, text: &str) -> Response {
    render(
        st,
        status,
        "message.html",
        context! {user => v.name(), csrf => v.csrf(), title, text},
    )
}

fn server_error(st: &AppState, e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "request failed");
    message(
        st,
        &Visitor::default(),
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "The server could not complete this request. Please try again.",
    )
}

fn login_redirect(next: &str) -> Response {
    let next: String = form_urlencoded::byte_serialize(next.as_bytes()).collect();
    Redirect::to(&format!("/accounts/login/?next={next}")).into_response()
}

/// `GET /dams/`.
#[derive(Deserialize)]
struct HomeQuery {
    added: Option<String>,
}

async fn home(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HomeQuery>,
) -> Response {
    let v = match visitor(&st, &headers).await {
        Ok(v) => v,
        Err(e) => return server_error(&st, e),
    };
    let dams = match st.db.dams().await {
        Ok(d) => d,
        Err(e) => return server_error(&st, e),
    };
    let plot = dam::plot(&dams);
    // Only announce a dam the inventory really has (the parameter is anyone's to type).
    let added = q.added.filter(|a| dams.iter().any(|d| &d.name == a));
    render(
        &st,
        StatusCode::OK,
        "home.html",
        context! {
            user => v.name(),
            csrf => v.csrf(),
            can_add => v.can(Permission::Add),
            notifications => v.can(Permission::View),
            max_dams => st.settings.max_dams,
            dams,
            plot,
            added,
        },
    )
}

fn today() -> time::Date {
    // A date is "not in the future" if it is not after today anywhere on Earth.
    let now = time::OffsetDateTime::now_utc().date();
    now.next_day().unwrap_or(now)
}

fn add_page(
    st: &AppState,
    v: &Visitor,
    status: StatusCode,
    form: &DamForm,
    errors: &dam::FieldErrors,
    form_error: Option<String>,
) -> Response {
    render(
        st,
        status,
        "add.html",
        context! {
            user => v.name(),
            csrf => v.csrf(),
            owners => OWNERS,
            form,
            errors,
            form_error,
            max_dams => st.settings.max_dams,
        },
    )
}

/// Who may use the add form: `Ok` for a user with `add`, else the response to give.
async fn adder(st: &AppState, headers: &HeaderMap) -> std::result::Result<Visitor, Response> {
    let v = visitor(st, headers)
        .await
        .map_err(|e| server_error(st, e))?;
    if v.user.is_none() {
        return Err(login_redirect("/dams/add/"));
    }
    if !v.can(Permission::Add) {
        return Err(message(
            st,
            &v,
            StatusCode::FORBIDDEN,
            "Not allowed",
            "Your account may look at the inventory but not add dams. Ask an administrator for the add permission.",
        ));
    }
    Ok(v)
}

/// `GET /dams/add/`.
async fn add_form(State(st): State<AppState>, headers: HeaderMap) -> Response {
    match adder(&st, &headers).await {
        Ok(v) => add_page(
            &st,
            &v,
            StatusCode::OK,
            &DamForm::default(),
            &dam::FieldErrors::new(),
            None,
        ),
        Err(resp) => resp,
    }
}

/// `POST /dams/add/`.
async fn add_submit(
    State(st): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<DamForm>,
) -> Response {
    let v = match adder(&st, &headers).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    if form.csrf_token != v.csrf() {
        return message(
            &st,
            &v,
            StatusCode::FORBIDDEN,
            "Form expired",
            "This form expired or came from another site. Reload the page and try again.",
        );
    }
    let new = match form.validate(today()) {
        Ok(d) => d,
        Err(errors) => return add_page(&st, &v, StatusCode::BAD_REQUEST, &form, &errors, None),
    };
    let name = new.name.clone();
    let by = v.name().unwrap_or_default().to_owned();
    match st.db.add_dam(new, by, st.settings.max_dams).await {
        Err(e) => server_error(&st, e),
        Ok(Added::Full) => add_page(
            &st,
            &v,
            StatusCode::BAD_REQUEST,
            &form,
            &dam::FieldErrors::new(),
            Some(format!(
                "Unable to add dam {name}, because the inventory is full."
            )),
        ),
        Ok(Added::NameTaken) => {
            let mut errors = dam::FieldErrors::new();
            errors.insert(
                "name",
                format!("A dam named {name} is already in the inventory."),
            );
            add_page(&st, &v, StatusCode::BAD_REQUEST, &form, &errors, None)
        }
        Ok(Added::Stored(id)) => {
            tracing::info!(id, %name, "dam added");
            // Every open inventory page hears about it — in this process or, on Redis, any.
            let note = json!({"type": "dam.notification", "message": "New Dam", "name": name});
            if let Err(e) = st.layer.group_send(notifications(), note).await {
                tracing::warn!(error = %e, "the dam is stored but the notification was not sent");
            }
            // The report is recomputed by a worker, off the request path (report.rs).
            if let Err(e) = report::request(&st.layer, "dam added").await {
                tracing::warn!(error = %e, "the dam is stored but the report was not requested");
            }
            let added: String = form_urlencoded::byte_serialize(name.as_bytes()).collect();
            Redirect::to(&format!("/dams/?added={added}")).into_response()
        }
    }
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

/// Only paths on this site: `/x`, never `//host` or `/\host` — nor anything with a control
/// character, whitespace or a backslash anywhere: browsers drop tabs and newlines from a
/// `Location` and read `\` as `/`, so `/\t/evil.example` would become `//evil.example`.
pub fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if n.starts_with('/')
                && !n.starts_with("//")
                && !n
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace() || c == '\\') =>
        {
            n
        }
        _ => "/dams/",
    }
}

/// `GET /accounts/login/`.
async fn login_form(
    State(st): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    let v = visitor(&st, &headers).await.unwrap_or_default();
    render(
        &st,
        StatusCode::OK,
        "login.html",
        context! {user => v.name(), csrf => v.csrf(), next => safe_next(q.next.as_deref()), username => "", error => None::<String>},
    )
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    next: Option<String>,
}

fn session_cookie(st: &AppState, value: &str, max_age: Duration) -> Option<HeaderValue> {
    let c = cookie::Cookie::build((SESSION_COOKIE, value.to_owned()))
        .path("/")
        .http_only(true)
        .same_site(cookie::SameSite::Lax)
        .secure(st.settings.secure_cookies)
        .max_age(cookie::time::Duration::seconds(
            i64::try_from(max_age.as_secs()).unwrap_or(i64::MAX / 2),
        ))
        .build();
    HeaderValue::from_str(&c.to_string()).ok()
}

/// `POST /accounts/login/`.
async fn login_submit(State(st): State<AppState>, Form(form): Form<LoginForm>) -> Response {
    let next = safe_next(form.next.as_deref()).to_owned();
    let users = st.users.clone();
    let (name, password) = (form.username.trim().to_owned(), form.password);
    let Ok(slot) = st.settings.password_checks.clone().try_acquire_owned() else {
        tracing::warn!(user = %name, "login refused: every password-check slot is busy");
        let mut resp = render(
            &st,
            StatusCode::SERVICE_UNAVAILABLE,
            "login.html",
            context! {user => None::<String>, csrf => "", next, username => name, error => "Too many logins are being checked right now. Please try again in a moment."},
        );
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return resp;
    };
    let checked_name = name.clone();
    // Argon2 is slow by design: keep it off the async threads. The slot goes with the check, so
    // it stays taken until the check ends even if the client gives up first.
    let user = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        users.verify(&checked_name, &password).cloned()
    })
    .await
    .ok()
    .flatten();
    let Some(user) = user else {
        tracing::info!(user = %name, "failed login");
        return render(
            &st,
            StatusCode::BAD_REQUEST,
            "login.html",
            context! {user => None::<String>, csrf => "", next, username => name, error => "Incorrect user name or password."},
        );
    };
    let session = match st
        .db
        .create_session(user.name.clone(), st.settings.session_ttl)
        .await
    {
        Ok(s) => s,
        Err(e) => return server_error(&st, e),
    };
    tracing::info!(user = %user.name, "logged in");
    let mut resp = Redirect::to(&next).into_response();
    if let Some(c) = session_cookie(&st, &session.id, st.settings.session_ttl) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf_token: String,
}

/// `POST /accounts/logout/`.
async fn logout(
    State(st): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    let v = match visitor(&st, &headers).await {
        Ok(v) => v,
        Err(e) => return server_error(&st, e),
    };
    if let Some(s) = &v.session {
        if form.csrf_token != s.csrf_token {
            return message(
                &st,
                &v,
                StatusCode::FORBIDDEN,
                "Form expired",
                "Reload the page and try again.",
            );
        }
        if let Err(e) = st.db.delete_session(s.id.clone()).await {
            return server_error(&st, e);
        }
    }
    let mut resp = Redirect::to("/dams/").into_response();
    if let Some(c) = session_cookie(&st, "", Duration::ZERO) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp
}

/// Lets a notifications socket in only with a live session of a user who has `view`.
#[derive(Clone)]
struct SessionAuth {
    db: Db,
    users: Arc<Users>,
}

impl Authenticate for SessionAuth {
    async fn authenticate(&self, scope: &mut Scope) -> std::result::Result<(), Refusal> {
        let id = session_id(scope.cookie(SESSION_COOKIE))
            .ok_or_else(|| Refusal::forbidden("not logged in"))?;
        let session = self
            .db
            .session(id)
            .await
            .map_err(|e| {
                let told = switchboard::error::report("reading the session", &e);
                Refusal::new(Status::SERVICE_UNAVAILABLE, told)
            })?
            .ok_or_else(|| Refusal::forbidden("session expired or unknown"))?;
        let user = self
            .users
            .get(&session.username)
            .ok_or_else(|| Refusal::forbidden("unknown user"))?;
        if !user.can(Permission::View) {
            return Err(Refusal::forbidden(format!(
                "{} may not view notifications",
                user.name
            )));
        }
        scope.set_user(user.name.clone());
        Ok(())
    }
}

/// What the notifications group carries.
#[derive(Deserialize, Debug)]
#[serde(tag = "type")]
pub enum DamEvent {
    /// A dam was added.
    #[serde(rename = "dam.notification")]
    Notification {
        /// What happened ("New Dam").
        message: String,
        /// The dam's name.
        name: String,
    },
}

/// One inventory page's notifications socket.
#[derive(Debug)]
pub struct NotificationsConsumer;

impl Consumer for NotificationsConsumer {
    type Incoming = Frame;
    type Event = DamEvent;

    async fn connect(&mut self, conn: &mut Connection) -> Result<()> {
        conn.group_add(notifications()).await?;
        conn.accept().await
    }

    async fn receive(&mut self, _conn: &mut Connection, _frame: Frame) -> Result<()> {
        Err(Error::protocol("this socket only sends notifications"))
    }

    async fn event(&mut self, conn: &mut Connection, event: DamEvent) -> Result<()> {
        match event {
            DamEvent::Notification { message, name } => {
                conn.send_json(
                    &json!({"type": "dam.notification", "message": message, "name": name}),
                )
                .await
            }
        }
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// A socket of the app: the session check, the origins, the limits and the drain.
fn guarded<F, R>(
    endpoint: Endpoint<F>,
    auth: &SessionAuth,
    settings: &Settings,
) -> Endpoint<F, SessionAuth>
where
    F: Fn(&Scope) -> R + Send + Sync + 'static,
    R: switchboard::consumer::IntoConsumer,
{
    endpoint
        .authenticate(auth.clone())
        .origins(settings.origins.clone())
        .allow_missing_origin(settings.allow_missing_origin)
        .config(settings.connection.clone())
        .shutdown(&settings.shutdown)
}

/// The whole app.
pub fn router(db: Db, users: Users, layer: Layer, settings: Settings) -> Router {
    let users = Arc::new(users);
    let auth = SessionAuth {
        db: db.clone(),
        users: users.clone(),
    };
    let ws = guarded(
        Endpoint::new(layer.clone(), |_: &Scope| NotificationsConsumer),
        &auth,
        &settings,
    );
    let report_ws = guarded(
        Endpoint::new(layer.clone(), |_: &Scope| report::ReportConsumer),
        &auth,
        &settings,
    );
    let state = AppState {
        db,
        layer,
        users,
        settings: Arc::new(settings),
        pages: Arc::new(pages()),
    };
    Router::new()
        .route("/", get(|| async { Redirect::to("/dams/") }))
        .route("/dams/", get(home))
        .route("/dams/add/", get(add_form).post(add_submit))
        .route("/accounts/login/", get(login_form).post(login_submit))
        .route("/accounts/logout/", axum::routing::post(logout))
        .route("/dams/notifications/ws/", ws.into_route())
        .route("/dams/report/ws/", report_ws.into_route())
        .route(
            "/static/dams.css",
            get(|| async {
                asset(
                    "text/css; charset=utf-8",
                    include_str!("../static/dams.css"),
                )
            }),
        )
        .route(
            "/switchboard.js",
            get(|| async { switchboard::js::response() }),
        )
        .route(
            "/static/dams.js",
            get(|| async {
                asset(
                    "text/javascript; charset=utf-8",
                    include_str!("../static/dams.js"),
                )
            }),
        )
        .with_state(state)
}
