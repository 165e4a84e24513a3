//! ui: the web UI every master serves at `/ui/`, opened in headless Chromium against a real
//! cluster, and the requests it makes (`/ui/api/view`, `/ui/api/events`,
//! `/ui/api/output`), through a follower as well as the leader.
//!
//! The browser test needs Chromium (Debian's `chromium`, which `.ci/run` installs, or
//! `CORRAL_CHROMIUM`); without one it fails saying so, unless `CORRAL_SKIP_BROWSER=1`.
//! `CORRAL_UI_SCREENSHOT=FILE` saves a screenshot of the UI it drew (the README's).

use std::time::Duration;

use corral_proto::v1;
use corral_proto::v1::TaskState;
use corral_tests::browser::{chromium, Browser};
use corral_tests::{wait_for, Cluster, Framework};

const T: Duration = Duration::from_secs(30);

/// The first offer from agent `agent_id`, declining the others (so they come back).
async fn offer_from(fw: &mut Framework, agent_id: &str) -> v1::Offer {
    loop {
        let mut found = None;
        let mut others = Vec::new();
        for o in fw.next_offers(T).await {
            if found.is_none() && o.agent_id == agent_id {
                found = Some(o);
            } else {
                others.push(o.offer_id);
            }
        }
        if !others.is_empty() {
            fw.decline(others, 0.0).await.unwrap();
        }
        if let Some(o) = found {
            return o;
        }
    }
}

async fn get_json(address: &str, target: &str) -> serde_json::Value {
    let (code, body) = corral_proto::http::get(
        address,
        corral_proto::tls::Role::Master,
        target,
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|e| panic!("GET {target} from {address}: {e}"));
    assert_eq!(code, 200, "GET {target} from {address}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {target}: not JSON ({e}): {body}"))
}

/// The UI's requests answer the leader's view through any master: `/` redirects to the
/// page, a follower relays the view (with the soft state only the leader has: who is
/// subscribed, what is offered) and the event stream, and any master reads a task's output
/// off its agent; bad requests get 400 naming the parameter, unknown tasks 404.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_api_answers_the_leaders_view_through_a_follower() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_leader(&[1, 2, 3], T).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let (l_addr, f_addr) = (
        cluster.address(leader).to_string(),
        cluster.address(follower).to_string(),
    );
    cluster.start_agent("ui-a1", "cpus:2;mem:1024", "");
    let agents = cluster.wait_agents(1, T).await;
    let agent_id = agents[0].agent_id.clone();

    // The page and its assets, on a follower too.
    let root = corral_proto::http::open(&f_addr, corral_proto::tls::Role::Master, "/", &[], T)
        .await
        .unwrap();
    assert_eq!(root.status, 307, "/ redirects");
    assert_eq!(root.header("location"), Some("/ui/"));
    let page = corral_proto::http::open(&f_addr, corral_proto::tls::Role::Master, "/ui/", &[], T)
        .await
        .unwrap();
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap_or_default().starts_with("text/html"));
    let html = String::from_utf8(page.body.read_to_end(1 << 20).await.unwrap()).unwrap();
    assert!(html.contains("app.js") && html.contains("app.css"), "{html}");
    let script = corral_proto::http::open(&f_addr, corral_proto::tls::Role::Master, "/ui/app.js", &[], T)
        .await
        .unwrap();
    assert_eq!(script.status, 200);
    assert!(script
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/javascript"));

    // The follower relays the event stream: it starts, and carries the task below.
    let mut events = corral_proto::http::open(&f_addr, corral_proto::tls::Role::Master, "/ui/api/events", &[], T)
        .await
        .unwrap();
    assert_eq!(events.status, 200);
    assert_eq!(events.header("content-type"), Some("text/event-stream"));

    let mut fw = cluster.framework("ui-api", "").await;
    let offer = offer_from(&mut fw, &agent_id).await;
    let task = Framework::task(
        "said",
        &agent_id,
        0.1,
        32.0,
        &["sh", "-c", "echo said-on-stdout; echo said-on-stderr >&2"],
    );
    fw.accept(vec![offer.offer_id], vec![task], 0.0).await.unwrap();
    fw.wait_state("said", TaskState::TaskFinished, T).await;

    let mut seen = String::new();
    let give_up = std::time::Instant::now() + T;
    while !(seen.contains("event: task") && seen.contains("\"task_id\":\"said\"") && seen.contains("TASK_FINISHED")) {
        use tokio_stream::StreamExt;
        let left = give_up.saturating_duration_since(std::time::Instant::now());
        match tokio::time::timeout(left, events.body.next()).await {
            Ok(Some(Ok(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("the relayed event stream ended or went quiet ({other:?}); so far:\n{seen}"),
        }
    }

    // The view through the follower is the leader's: its id, the framework subscribed (soft
    // state), the agent attached, the task with its state.
    let view = wait_for(T, "the follower's view to list the finished task", || {
        let f_addr = f_addr.clone();
        async move {
            let v = get_json(&f_addr, "/ui/api/view").await;
            let done = v["tasks"].as_array().is_some_and(|ts| {
                ts.iter()
                    .any(|t| t["task_id"] == "said" && t["state"] == "TASK_FINISHED")
            });
            done.then_some(v)
        }
    })
    .await;
    assert_eq!(view["leader"]["id"], leader, "{view}");
    assert_eq!(view["members"].as_array().map(Vec::len), Some(3), "{view}");
    let fw_view = view["frameworks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["framework_id"] == fw.id.as_str())
        .unwrap_or_else(|| panic!("framework not in {view}"));
    assert_eq!(fw_view["state"], "FRAMEWORK_CONNECTED", "{fw_view}");
    assert_eq!(fw_view["tasks"]["TASK_FINISHED"], 1, "{fw_view}");
    let agent = &view["agents"][0];
    assert_eq!(agent["agent_id"], agent_id.as_str());
    assert_eq!(agent["attached"], true);
    // The offers listed are the leader's: the framework holds some (the agent's resources
    // came back after the task), and none of them is offered to anyone else.
    let offers = view["offers"].as_array().unwrap();
    assert!(offers.iter().all(|o| o["framework_id"] == fw.id.as_str()), "{view}");
    // Filters.
    let running = get_json(&f_addr, "/ui/api/view?state=TASK_RUNNING").await;
    assert_eq!(running["tasks_matching"], 0, "{running}");
    let terminal = get_json(&l_addr, &format!("/ui/api/view?state=terminal&framework_id={}", fw.id)).await;
    assert_eq!(terminal["tasks_matching"], 1, "{terminal}");

    // Output, from either master.
    for addr in [&f_addr, &l_addr] {
        for (file, text) in [("stdout", "said-on-stdout\n"), ("stderr", "said-on-stderr\n")] {
            let target = format!("/ui/api/output?framework_id={}&task_id=said&file={file}", fw.id);
            let (code, body) = corral_proto::http::get(addr, corral_proto::tls::Role::Master, &target, T)
                .await
                .unwrap();
            assert_eq!((code, body.as_str()), (200, text), "{target} on {addr}");
        }
    }
    let bad = |target: &'static str, code: u16, says: &'static str| {
        let f_addr = f_addr.clone();
        async move {
            let (c, body) = corral_proto::http::get(&f_addr, corral_proto::tls::Role::Master, target, T)
                .await
                .unwrap();
            assert_eq!(c, code, "{target}: {body}");
            assert!(body.contains(says), "{target}: {body}");
        }
    };
    bad("/ui/api/output?task_id=said", 400, "framework_id").await;
    bad("/ui/api/output?framework_id=f&task_id=said&file=core", 400, "file").await;
    bad("/ui/api/output?framework_id=f&task_id=nope", 404, "not known").await;
    // A relayed request that reaches a master which is not the leader is not relayed again.
    let relayed = corral_proto::http::open(
        &f_addr,
        corral_proto::tls::Role::Master,
        "/ui/api/view",
        &[("x-corral-relayed-by", "9")],
        T,
    )
    .await
    .unwrap();
    assert_eq!(relayed.status, 503);

    // Kill the agent: the follower's view says it is no longer attached.
    cluster.kill_agent("ui-a1");
    wait_for(T, "the view to show the agent detached", || {
        let f_addr = f_addr.clone();
        async move { (get_json(&f_addr, "/ui/api/view").await["agents"][0]["attached"] == false).then_some(()) }
    })
    .await;
}

/// The UI in a real browser, opened on a follower: the leader, both agents, the running
/// framework and its task appear; the task finishing shows without a reload; its stdout
/// opens from its link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_in_a_browser_shows_the_cluster_live() {
    let Some(binary) = chromium() else {
        if std::env::var_os("CORRAL_SKIP_BROWSER").is_some() {
            eprintln!("skipped: no Chromium and CORRAL_SKIP_BROWSER is set");
            return;
        }
        panic!("no Chromium on the PATH (apt-get install chromium, or set CORRAL_CHROMIUM)");
    };
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_leader(&[1, 2, 3], T).await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    cluster.start_agent("ui-b1", "cpus:4;mem:4096", "rack:r1");
    cluster.start_agent("ui-b2", "cpus:2;mem:2048", "rack:r2");
    let agents = cluster.wait_agents(2, T).await;
    let gate = tempfile::tempdir().unwrap();
    let go = gate.path().join("go");
    let mut fw = cluster.framework("ui-web", "analytics").await;
    let offer = offer_from(&mut fw, &agents[0].agent_id).await;
    let script = format!(
        "echo hello-from-the-ui; while [ ! -e '{}' ]; do sleep 0.1; done",
        go.display()
    );
    let task = Framework::task("web-1", &agents[0].agent_id, 1.0, 256.0, &["sh", "-c", &script]);
    fw.accept(vec![offer.offer_id], vec![task], 0.0).await.unwrap();
    fw.wait_state("web-1", TaskState::TaskRunning, T).await;

    let mut browser = Browser::launch(&binary, 1400, 1100);
    browser.navigate(&format!("http://{}/", cluster.address(follower)));
    let row = format!("document.querySelector('#tasks tr[data-id=\"{}/web-1\"]')", fw.id);
    let text = "document.body.innerText";
    browser
        .wait_until("the redirect to /ui/", "location.pathname === '/ui/'", T)
        .await;
    browser
        .wait_until(
            "the leader named",
            &format!(
                "{text}.includes('leader: master {leader} at {}')",
                cluster.address(leader)
            ),
            T,
        )
        .await;
    for a in &agents {
        browser
            .wait_until(
                &format!("agent {}", a.agent_id),
                &format!(
                    "document.querySelector('#agents tr[data-id=\"{}\"]') !== null",
                    a.agent_id
                ),
                T,
            )
            .await;
    }
    browser
        .wait_until(
            "the framework, connected",
            &format!(
                "document.querySelector('#frameworks tr[data-id=\"{}\"]').innerText.includes('FRAMEWORK_CONNECTED')",
                fw.id
            ),
            T,
        )
        .await;
    browser
        .wait_until(
            "its task, running",
            &format!("{row}.querySelector('.task-state').textContent === 'TASK_RUNNING'"),
            T,
        )
        .await;
    browser
        .wait_until(
            "the event stream open",
            "document.getElementById('live').textContent === 'live'",
            T,
        )
        .await;
    if let Some(path) = std::env::var_os("CORRAL_UI_SCREENSHOT") {
        std::fs::write(&path, browser.screenshot()).expect("writing the screenshot");
    }

    // The task finishes: the page shows it without a reload (the mark set now survives).
    browser.eval("window.__still_the_same_page = true");
    std::fs::write(&go, b"").unwrap();
    fw.wait_state("web-1", TaskState::TaskFinished, T).await;
    browser
        .wait_until(
            "the task finished, on the same page",
            &format!("window.__still_the_same_page === true && {row}.querySelector('.task-state').textContent === 'TASK_FINISHED'"),
            T,
        )
        .await;

    // Its stdout opens from its link.
    let href = browser.eval(&format!("{row}.querySelector('a.output-stdout').href"));
    let href = href.as_str().expect("a link").to_string();
    browser.navigate(&href);
    browser
        .wait_until(
            "the task's stdout",
            &format!("{text}.trim() === 'hello-from-the-ui'"),
            T,
        )
        .await;
}
