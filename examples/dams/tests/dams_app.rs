//! The dams example over real sockets and a real SQLite file: form validation (each field),
//! the max-dams rule, permissions (anonymous and non-permitted users can neither add nor open
//! the notifications socket), login, the notification an add sends, two app instances
//! on one layer notifying each other's pages, and replicas opening one new database at once.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::OnceLock;

use dams::db::Db;
use dams::users::{User, Users, hash_password};
use reqwest::StatusCode;
use reqwest::redirect::Policy;
use serde_json::json;
use switchboard::{InMemoryLayer, Layer};
use test_support::{TempDir, WsClient, try_ws, try_ws_with};

const NOTIFICATIONS: &str = "/dams/notifications/ws/";

/// editor: view + add; viewer: view; guest: nothing. Password = name + "-pw".
fn users() -> Users {
    static HASHES: OnceLock<Vec<(String, String)>> = OnceLock::new();
    let hashes = HASHES.get_or_init(|| {
        ["editor", "viewer", "guest"]
            .iter()
            .map(|n| (n.to_string(), hash_password(&format!("{n}-pw")).unwrap()))
            .collect()
    });
    let perms = |n: &str| match n {
        "editor" => "view,add",
        "viewer" => "view",
        _ => "",
    };
    Users::new(
        hashes
            .iter()
            .map(|(n, h)| Users::parse_flag(&format!("{n}:{}:{h}", perms(n))).unwrap())
            .collect::<Vec<User>>(),
    )
    .unwrap()
}

struct App {
    addr: SocketAddr,
    db: Db,
    http: reqwest::Client,
    _dir: TempDir,
}

async fn start(max_dams: usize) -> App {
    let dir = TempDir::new("dams");
    let db = Db::open(&dir.path().join("dams.sqlite"), false).unwrap();
    let layer = Layer::new(InMemoryLayer::default());
    let addr = serve(&db, layer, max_dams).await;
    App {
        addr,
        db,
        http: client(),
        _dir: dir,
    }
}

async fn serve(db: &Db, layer: Layer, max_dams: usize) -> SocketAddr {
    let settings = dams::Settings {
        max_dams,
        ..dams::Settings::default()
    };
    test_support::serve(dams::router(db.clone(), users(), layer, settings)).await
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap()
}

/// The HTML of the page at `path`, with the session `cookie` if given.
async fn page(app: &App, path: &str, cookie: Option<&str>) -> String {
    let mut req = app.http.get(format!("http://{}{path}", app.addr));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    req.send().await.unwrap().text().await.unwrap()
}

/// A logged-in browser, reduced to its cookie and the form token.
struct Login {
    cookie: String,
    csrf: String,
}

fn csrf_in(html: &str) -> String {
    let marker = "name=\"csrf_token\" value=\"";
    let start = html.find(marker).expect("no csrf token on the page") + marker.len();
    html[start..start + 64].to_owned()
}

async fn login(app: &App, user: &str) -> Login {
    let resp = app
        .http
        .post(format!("http://{}/accounts/login/", app.addr))
        .form(&[
            ("username", user),
            ("password", &format!("{user}-pw")),
            ("next", "/dams/"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER, "login as {user}");
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_owned();
    let home = page(app, "/dams/", Some(&cookie)).await;
    assert!(home.contains(&format!("<strong id=\"whoami\">{user}</strong>")));
    Login {
        csrf: csrf_in(&home),
        cookie,
    }
}

fn hoover() -> Vec<(&'static str, String)> {
    vec![
        ("name", "Hoover Dam".into()),
        ("owner", "Bureau of Reclamation".into()),
        ("river", "Colorado River".into()),
        ("built", "1936-03-01".into()),
        ("latitude", "36.016".into()),
        ("longitude", "-114.738".into()),
    ]
}

async fn add(
    app: &App,
    who: Option<&Login>,
    fields: &[(&str, String)],
) -> (StatusCode, String, Option<String>) {
    let mut form: Vec<(&str, String)> = fields.to_vec();
    let mut req = app.http.post(format!("http://{}/dams/add/", app.addr));
    if let Some(l) = who {
        form.push(("csrf_token", l.csrf.clone()));
        req = req.header("cookie", &l.cookie);
    }
    let resp = req.form(&form).send().await.unwrap();
    let status = resp.status();
    let location = resp
        .headers()
        .get("location")
        .map(|l| l.to_str().unwrap().to_owned());
    (status, resp.text().await.unwrap(), location)
}

async fn notifications(app: &App, who: &Login) -> WsClient {
    try_ws_with(app.addr, NOTIFICATIONS, &[("cookie", &who.cookie)])
        .await
        .unwrap_or_else(|s| panic!("notifications refused: {s}"))
}

async fn names(app: &App) -> Vec<String> {
    app.db
        .dams()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect()
}

fn field_errors(html: &str) -> usize {
    html.matches("class=\"field-error\"").count()
}

#[tokio::test]
async fn each_field_is_validated_beside_it_and_nothing_is_stored() {
    let app = start(50).await;
    let editor = login(&app, "editor").await;
    let viewer = login(&app, "viewer").await;
    let mut page = notifications(&app, &viewer).await;

    let cases: &[(&str, &str, &str)] = &[
        ("name", "", "This field is required."),
        ("name", "   ", "This field is required."),
        ("name", &"x".repeat(101), "Use at most 100 characters."),
        ("owner", "", "This field is required."),
        ("owner", "Some Guy", "Choose an owner from the list."),
        ("river", "", "This field is required."),
        ("built", "", "This field is required."),
        ("built", "1936-02-30", "Enter a real date as YYYY-MM-DD"),
        ("built", "March 1936", "Enter a real date as YYYY-MM-DD"),
        (
            "built",
            "2999-01-01",
            "The date built cannot be in the future.",
        ),
        ("latitude", "", "This field is required."),
        ("latitude", "north", "Enter a number"),
        ("latitude", "90.5", "Latitude must be between -90 and 90."),
        ("latitude", "NaN", "Latitude must be between -90 and 90."),
        (
            "longitude",
            "-180.01",
            "Longitude must be between -180 and 180.",
        ),
        (
            "longitude",
            "1e400",
            "Longitude must be between -180 and 180.",
        ),
    ];
    for (field, value, message) in cases {
        let mut form = hoover();
        for f in form.iter_mut() {
            if f.0 == *field {
                f.1 = (*value).to_owned();
            }
        }
        let (status, html, _) = add(&app, Some(&editor), &form).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}={value:?}");
        let at = html
            .find(&format!("id=\"error-{field}\""))
            .unwrap_or_else(|| panic!("no error beside {field} for {value:?}"));
        assert!(
            html[at..].starts_with(&format!("id=\"error-{field}\">{message}")),
            "{field}={value:?}: {}",
            &html[at..(at + 120).min(html.len())]
        );
        assert_eq!(field_errors(&html), 1, "{field}={value:?}: only that field");
        assert!(html.contains("Nothing was saved."));
        // The other fields keep what was typed.
        if *field != "river" {
            assert!(html.contains("value=\"Colorado River\""), "{field}");
        }
    }
    // Everything missing: an error beside every field.
    let (status, html, _) = add(&app, Some(&editor), &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(field_errors(&html), 6);
    // Markup in a value is shown, not run.
    let mut form = hoover();
    form[0].1 = "<script>alert(1)</script>".into();
    form[4].1 = "x".into();
    let (_, html, _) = add(&app, Some(&editor), &form).await;
    assert!(!html.contains("<script>alert(1)"));
    assert!(html.contains("&lt;script&gt;"));

    assert!(names(&app).await.is_empty(), "a bad form stored a dam");
    assert!(
        page.recv_nothing(200).await,
        "a bad form sent a notification"
    );
}

#[tokio::test]
async fn a_valid_dam_is_stored_shown_and_announced_to_every_page() {
    let app = start(50).await;
    let editor = login(&app, "editor").await;
    let viewer = login(&app, "viewer").await;
    let mut viewer_page = notifications(&app, &viewer).await;
    let mut other_viewer_page = notifications(&app, &viewer).await;

    let (status, _, location) = add(&app, Some(&editor), &hoover()).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(location.as_deref(), Some("/dams/?added=Hoover+Dam"));
    let expected = json!({"type": "dam.notification", "message": "New Dam", "name": "Hoover Dam"});
    assert_eq!(viewer_page.recv_json().await, expected);
    assert_eq!(other_viewer_page.recv_json().await, expected);

    let dams = app.db.dams().await.unwrap();
    assert_eq!(dams.len(), 1);
    let d = &dams[0];
    assert_eq!(
        (
            &d.name[..],
            &d.owner[..],
            &d.river[..],
            &d.built[..],
            d.latitude,
            d.longitude,
            &d.added_by[..]
        ),
        (
            "Hoover Dam",
            "Bureau of Reclamation",
            "Colorado River",
            "1936-03-01",
            36.016,
            -114.738,
            "editor"
        )
    );
    let home = page(&app, "/dams/?added=Hoover+Dam", None).await;
    assert!(home.contains("<td class=\"name\">Hoover Dam</td>"));
    assert!(home.contains("Hoover Dam was added to the inventory."));
    assert_eq!(home.matches("<circle ").count(), 1, "one dot on the plot");
    let forged = page(&app, "/dams/?added=Nothing+Here", None).await;
    assert!(
        !forged.contains("was added"),
        "a flash for a dam that is not there"
    );

    // The same name again, in another case, is refused beside the name.
    let mut again = hoover();
    again[0].1 = "HOOVER dam".into();
    let (status, html, _) = add(&app, Some(&editor), &again).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("id=\"error-name\">A dam named HOOVER dam is already in the inventory."));
    assert_eq!(names(&app).await.len(), 1);
    assert!(viewer_page.recv_nothing(200).await);
}

#[tokio::test]
async fn past_max_dams_nothing_is_stored() {
    let app = start(2).await;
    let editor = login(&app, "editor").await;
    let mut page = notifications(&app, &editor).await;
    for name in ["One Dam", "Two Dam"] {
        let mut form = hoover();
        form[0].1 = name.into();
        assert_eq!(
            add(&app, Some(&editor), &form).await.0,
            StatusCode::SEE_OTHER
        );
        assert_eq!(page.recv_json().await["name"], name);
    }
    let mut form = hoover();
    form[0].1 = "Three Dam".into();
    let (status, html, _) = add(&app, Some(&editor), &form).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        html.contains("id=\"form-error\" role=\"alert\">Unable to add dam Three Dam, because the inventory is full."),
        "{html}"
    );
    assert_eq!(names(&app).await, ["One Dam", "Two Dam"]);
    assert!(page.recv_nothing(200).await);
}

#[tokio::test]
async fn concurrent_adds_cannot_pass_max_dams() {
    let app = start(5).await;
    let editor = login(&app, "editor").await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (http, addr, cookie, csrf) = (
            app.http.clone(),
            app.addr,
            editor.cookie.clone(),
            editor.csrf.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut form = hoover();
            form[0].1 = format!("Dam {i}");
            form.push(("csrf_token", csrf));
            http.post(format!("http://{addr}/dams/add/"))
                .header("cookie", cookie)
                .form(&form)
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let mut stored = 0;
    for t in tasks {
        if t.await.unwrap() == StatusCode::SEE_OTHER {
            stored += 1;
        }
    }
    assert_eq!(stored, 5);
    assert_eq!(names(&app).await.len(), 5);
}

#[tokio::test]
async fn anonymous_and_unpermitted_users_cannot_add_nor_listen() {
    let app = start(50).await;
    let base = format!("http://{}", app.addr);

    // Anonymous: the form and the post send to the login page; the socket is refused.
    let r = app
        .http
        .get(format!("{base}/dams/add/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        r.headers()["location"],
        "/accounts/login/?next=%2Fdams%2Fadd%2F"
    );
    let (status, _, location) = add(&app, None, &hoover()).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(location.unwrap().starts_with("/accounts/login/"));
    assert_eq!(
        try_ws_with(app.addr, NOTIFICATIONS, &[]).await.err(),
        Some(403)
    );
    let forged = format!("sessionid={}", "a".repeat(64));
    for cookie in ["sessionid=garbage", forged.as_str()] {
        assert_eq!(
            try_ws_with(app.addr, NOTIFICATIONS, &[("cookie", cookie)])
                .await
                .err(),
            Some(403),
            "{cookie}"
        );
    }

    // guest: logged in, no permissions. viewer: notifications only.
    let guest = login(&app, "guest").await;
    let viewer = login(&app, "viewer").await;
    for who in [&guest, &viewer] {
        let r = app
            .http
            .get(format!("{base}/dams/add/"))
            .header("cookie", &who.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        assert!(r.text().await.unwrap().contains("not add dams"));
        assert_eq!(
            add(&app, Some(who), &hoover()).await.0,
            StatusCode::FORBIDDEN
        );
    }
    assert_eq!(
        try_ws_with(app.addr, NOTIFICATIONS, &[("cookie", &guest.cookie)])
            .await
            .err(),
        Some(403),
        "guest may not listen"
    );
    let mut viewer_page = notifications(&app, &viewer).await;

    // editor: a post without the form token is refused.
    let editor = login(&app, "editor").await;
    let forged = Login {
        cookie: editor.cookie.clone(),
        csrf: "0".repeat(64),
    };
    assert_eq!(
        add(&app, Some(&forged), &hoover()).await.0,
        StatusCode::FORBIDDEN
    );
    assert!(names(&app).await.is_empty(), "a refused add stored a dam");
    assert!(viewer_page.recv_nothing(200).await);

    // Logging out ends the session for the socket too.
    let r = app
        .http
        .post(format!("{base}/accounts/logout/"))
        .header("cookie", &viewer.cookie)
        .form(&[("csrf_token", viewer.csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(
        try_ws_with(app.addr, NOTIFICATIONS, &[("cookie", &viewer.cookie)])
            .await
            .err(),
        Some(403)
    );
}

#[tokio::test]
async fn login_refuses_wrong_passwords_and_foreign_redirects() {
    let app = start(50).await;
    let url = format!("http://{}/accounts/login/", app.addr);
    for (user, pass) in [("editor", "wrong"), ("nobody", "editor-pw"), ("", "")] {
        let r = app
            .http
            .post(&url)
            .form(&[("username", user), ("password", pass)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{user}");
        assert!(r.headers().get("set-cookie").is_none());
        assert!(
            r.text()
                .await
                .unwrap()
                .contains("Incorrect user name or password.")
        );
    }
    for (next, to) in [
        ("/dams/add/", "/dams/add/"),
        ("//evil.example/", "/dams/"),
        ("https://evil.example/", "/dams/"),
        ("/\\evil.example", "/dams/"),
        // Browsers drop tabs and newlines from a Location: these would become //evil.example.
        ("/\t/evil.example", "/dams/"),
        ("/\n/evil.example", "/dams/"),
        ("/\r\n/evil.example", "/dams/"),
        ("/ /evil.example", "/dams/"),
        ("/dams/\\..\\/evil", "/dams/"),
        ("/dams/?q=a b", "/dams/"),
        ("/dams/\u{85}x", "/dams/"),
        ("/dams/?added=Hoover%20Dam", "/dams/?added=Hoover%20Dam"),
    ] {
        let r = app
            .http
            .post(&url)
            .form(&[
                ("username", "editor"),
                ("password", "editor-pw"),
                ("next", next),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(r.headers()["location"], to, "next={next:?}");
    }
    let page = app.http.get(&url).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("id=\"id_password\""));
}

#[tokio::test]
async fn the_schema_is_created_on_first_run_and_the_data_stays() {
    let dir = TempDir::new("dams-schema");
    let path = dir.path().join("new.sqlite");
    assert!(!path.exists());
    let db = Db::open(&path, true).unwrap();
    assert_eq!(db.dams().await.unwrap().len(), 8, "demo dams on first run");
    let new = dams::dam::DamForm {
        name: "Test Dam".into(),
        owner: "Private company".into(),
        river: "Test River".into(),
        built: "2001-01-01".into(),
        latitude: "1".into(),
        longitude: "2".into(),
        csrf_token: String::new(),
    }
    .validate(time::OffsetDateTime::now_utc().date())
    .unwrap();
    assert!(matches!(
        db.add_dam(new, "t".into(), 50).await.unwrap(),
        dams::db::Added::Stored(_)
    ));
    drop(db);
    let db = Db::open(&path, true).unwrap();
    let names: Vec<String> = db
        .dams()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(
        names.len(),
        9,
        "reopening adds no demo dams and loses nothing"
    );
    assert!(names.contains(&"Test Dam".to_owned()));
}

#[tokio::test]
async fn replicas_opening_one_new_database_at_once_all_start_and_add_the_demo_dams_once() {
    // Replicas starting together open one new file at the same moment: each must come up, and
    // the schema and the demo dams must be made once. Repeated, as it is a race.
    for round in 0..5 {
        let dir = TempDir::new("dams-race");
        let path = dir.path().join("dams.sqlite");
        let start = std::sync::Arc::new(std::sync::Barrier::new(6));
        let openers: Vec<_> = (0..6)
            .map(|_| {
                let (path, start) = (path.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    Db::open(&path, true).map(|_| ())
                })
            })
            .collect();
        for opener in openers {
            let opened = opener.join().unwrap();
            assert!(opened.is_ok(), "round {round}: {opened:?}");
        }
        let db = Db::open(&path, true).unwrap();
        assert_eq!(db.dams().await.unwrap().len(), 8, "round {round}");
    }
}

#[tokio::test]
async fn two_app_instances_on_one_layer_notify_each_others_pages() {
    // Two app instances share the database file and the channel layer, as two processes
    // behind one Redis would (the in-memory layer stands in for Redis here).
    let dir = TempDir::new("dams-two");
    let path = dir.path().join("dams.sqlite");
    let layer = Layer::new(InMemoryLayer::default());
    let db_a = Db::open(&path, false).unwrap();
    let db_b = Db::open(&path, false).unwrap();
    let a = App {
        addr: serve(&db_a, layer.clone(), 50).await,
        db: db_a,
        http: client(),
        _dir: TempDir::new("unused"),
    };
    let b = App {
        addr: serve(&db_b, layer, 50).await,
        db: db_b,
        http: client(),
        _dir: dir,
    };
    let editor_on_a = login(&a, "editor").await;
    let viewer_on_b = login(&b, "viewer").await;
    let mut page_on_b = notifications(&b, &viewer_on_b).await;
    assert_eq!(
        add(&a, Some(&editor_on_a), &hoover()).await.0,
        StatusCode::SEE_OTHER
    );
    assert_eq!(page_on_b.recv_json().await["name"], "Hoover Dam");
    assert_eq!(names(&b).await, ["Hoover Dam"]);
}

#[tokio::test]
async fn the_notifications_socket_only_sends() {
    let app = start(50).await;
    let viewer = login(&app, "viewer").await;
    let mut page = notifications(&app, &viewer).await;
    page.send_text("hello").await;
    let err = page.recv_json().await;
    assert_eq!(err["type"], "error");
    assert!(err["error"].as_str().unwrap().contains("only sends"));
}

/// Every login runs Argon2 (19 MiB, tens of milliseconds), for unknown users too, and anyone
/// may POST the form: past `password_checks` at once, a login is refused at once with 503.
#[tokio::test]
async fn logins_past_the_password_check_limit_are_refused_with_503() {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(2));
    let dir = TempDir::new("dams-logins");
    let db = Db::open(&dir.path().join("dams.sqlite"), false).unwrap();
    let settings = dams::Settings {
        password_checks: slots.clone(),
        ..dams::Settings::default()
    };
    let addr = test_support::serve(dams::router(
        db,
        users(),
        Layer::new(InMemoryLayer::default()),
        settings,
    ))
    .await;
    let http = client();
    let url = format!("http://{addr}/accounts/login/");
    let login = |user: &'static str, password: &'static str| {
        http.post(&url)
            .form(&[
                ("username", user),
                ("password", password),
                ("next", "/dams/"),
            ])
            .send()
    };
    // Both slots busy (as two slow checks would keep them): refused, whoever asks.
    let busy = slots.clone().try_acquire_many_owned(2).unwrap();
    for (user, password) in [("editor", "editor-pw"), ("nobody", "x")] {
        let r = login(user, password).await.unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{user}");
        assert_eq!(r.headers()["retry-after"], "1");
        assert!(r.headers().get("set-cookie").is_none());
        let page = r.text().await.unwrap();
        assert!(page.contains("Too many logins"), "{page}");
        assert!(
            page.contains("id=\"id_password\""),
            "the form is shown again"
        );
    }
    // One slot free: a login goes through, and gives its slot back.
    drop(busy);
    let _one = slots.clone().try_acquire_owned().unwrap();
    assert_eq!(
        login("editor", "editor-pw").await.unwrap().status(),
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        login("editor", "wrong").await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    test_support::eventually(
        "the slot is back",
        std::time::Duration::from_secs(5),
        || slots.available_permits() == 1,
    )
    .await;
}

const REPORT: &str = "/dams/report/ws/";

/// An app whose layer the test holds, to run the report worker on it (or not).
async fn start_with_layer() -> (App, Layer) {
    let dir = TempDir::new("dams-report");
    let db = Db::open(&dir.path().join("dams.sqlite"), false).unwrap();
    let layer = Layer::new(InMemoryLayer::default());
    let addr = serve(&db, layer.clone(), 50).await;
    let app = App {
        addr,
        db,
        http: client(),
        _dir: dir,
    };
    (app, layer)
}

async fn report_socket(app: &App, who: &Login) -> WsClient {
    try_ws_with(app.addr, REPORT, &[("cookie", &who.cookie)])
        .await
        .unwrap_or_else(|s| panic!("report socket refused: {s}"))
}

#[tokio::test]
async fn an_add_leaves_the_report_to_the_worker_which_sends_it_to_the_report_pages() {
    let (app, layer) = start_with_layer().await;
    let editor = login(&app, "editor").await;
    let viewer = login(&app, "viewer").await;
    let mut report = report_socket(&app, &viewer).await;
    let mut notes = notifications(&app, &viewer).await;

    // No worker yet: the add answers at once, the job waits in the `dams-report` channel.
    assert_eq!(
        add(&app, Some(&editor), &hoover()).await.0,
        StatusCode::SEE_OTHER
    );
    assert_eq!(notes.recv_json().await["name"], "Hoover Dam");
    assert!(report.recv_nothing(200).await, "nobody computed a report");

    // The worker takes the job and group_sends the report.
    let worker = dams::report::worker(app.db.clone(), layer.clone());
    let stop = worker.stop_handle();
    let running = tokio::spawn(worker.run());
    let hoover_ref = json!({"name": "Hoover Dam", "built": "1936-03-01"});
    assert_eq!(
        report.recv_json().await,
        json!({
            "type": "report.ready", "reason": "dam added", "dams": 1,
            "owners": {"Bureau of Reclamation": 1},
            "oldest": hoover_ref, "newest": hoover_ref,
        })
    );

    // The next add: a new report with both dams; the notifications socket still gets only
    // its notification.
    let mut grand_coulee = hoover();
    grand_coulee[0].1 = "Grand Coulee Dam".into();
    grand_coulee[1].1 = "State agency".into();
    grand_coulee[3].1 = "1942-06-01".into();
    assert_eq!(
        add(&app, Some(&editor), &grand_coulee).await.0,
        StatusCode::SEE_OTHER
    );
    let r = report.recv_json().await;
    assert_eq!(r["dams"], 2);
    assert_eq!(
        r["owners"],
        json!({"Bureau of Reclamation": 1, "State agency": 1})
    );
    assert_eq!(r["oldest"], hoover_ref);
    assert_eq!(r["newest"]["name"], "Grand Coulee Dam");
    assert_eq!(notes.recv_json().await["name"], "Grand Coulee Dam");
    assert!(notes.recv_nothing(200).await);

    stop.stop();
    let stats = running.await.unwrap().unwrap();
    assert_eq!((stats.handled, stats.failed), (2, 0));
}

#[tokio::test]
async fn the_report_socket_admits_viewers_only_and_only_sends() {
    let (app, _layer) = start_with_layer().await;
    assert_eq!(try_ws(app.addr, REPORT).await.err(), Some(403));
    let guest = login(&app, "guest").await;
    assert_eq!(
        try_ws_with(app.addr, REPORT, &[("cookie", &guest.cookie)])
            .await
            .err(),
        Some(403)
    );
    let viewer = login(&app, "viewer").await;
    let mut page = report_socket(&app, &viewer).await;
    page.send_text("hello").await;
    let err = page.recv_json().await;
    assert_eq!(err["type"], "error");
    assert!(
        err["error"]
            .as_str()
            .unwrap()
            .contains("only sends reports")
    );
}
