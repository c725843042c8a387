//! A real server on port 0, pushed to and pulled from by `oci-client`, an independent client
//! implementation of the distribution spec.

mod support;

use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

struct Server {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _t: support::TestRegistry,
}

async fn server() -> Server {
    let t = support::registry().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let router = server::router(t.registry.clone());
    let task = tokio::spawn(server::serve(listener, router, async move { let _ = rx.await; }, Duration::from_secs(5)));
    Server { addr, stop: Some(tx), task, _t: t }
}

impl Server {
    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }
}

fn client() -> Client {
    Client::new(ClientConfig { protocol: ClientProtocol::Http, ..Default::default() })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_pull_mount_tags_and_referrers_with_oci_client() {
    let s = server().await;
    let c = client();
    let auth = RegistryAuth::Anonymous;
    let image: Reference = format!("{}/team/app:v1", s.addr).parse().unwrap();

    // Three layers, one of them large enough to span many reads.
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let layers = vec![
        ImageLayer::oci_v1(b"first layer".to_vec(), None),
        ImageLayer::oci_v1_gzip(big.clone(), None),
        ImageLayer::oci_v1(Vec::<u8>::new(), None),
    ];
    let config = Config::oci_v1(br#"{"architecture":"amd64","os":"linux"}"#.to_vec(), None);
    c.push(&image, &layers, config.clone(), &auth, None).await.expect("push");

    let pulled = c
        .pull(&image, &auth, vec!["application/vnd.oci.image.layer.v1.tar", "application/vnd.oci.image.layer.v1.tar+gzip"])
        .await
        .expect("pull");
    assert_eq!(pulled.layers.len(), 3);
    // The client fetches layers concurrently and returns them in completion order.
    let mut got: Vec<_> = pulled.layers.iter().map(|l| l.data.clone()).collect();
    let mut want: Vec<_> = layers.iter().map(|l| l.data.clone()).collect();
    got.sort();
    want.sort();
    assert!(got == want, "layer bytes round-trip");
    assert_eq!(pulled.config.data, config.data);

    // Pull by digest.
    let digest = pulled.digest.clone().unwrap();
    let by_digest: Reference = format!("{}/team/app@{digest}", s.addr).parse().unwrap();
    let (manifest, d2) = c.pull_image_manifest(&by_digest, &auth).await.expect("pull by digest");
    assert_eq!(d2, digest);
    assert_eq!(manifest.layers.len(), 3);

    // Cross-repository mount of the big layer, then a chunked streamed push.
    let other: Reference = format!("{}/team/other:v1", s.addr).parse().unwrap();
    let big_digest = manifest.layers[1].digest.clone();
    c.mount_blob(&other, &image, &big_digest).await.expect("mount");
    assert!(c.blob_exists(&other, &big_digest).await.unwrap());
    let chunks = big.chunks(700_000).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect::<Vec<_>>();
    let r = c.push_blob_stream_chunked(&other, futures::stream::iter(chunks)).await.expect("chunked push");
    assert_eq!(r.size, big.len() as u64);
    assert_eq!(r.blob_digest, big_digest);

    // Tags, with pagination.
    for tag in ["v2", "v3"] {
        let r: Reference = format!("{}/team/app:{tag}", s.addr).parse().unwrap();
        c.push(&r, &layers, config.clone(), &auth, None).await.expect("push tag");
    }
    let tags = c.list_tags(&image, &auth, None, None).await.unwrap();
    assert_eq!(tags.tags, ["v1", "v2", "v3"]);
    let page = c.list_tags(&image, &auth, Some(1), Some("v1")).await.unwrap();
    assert_eq!(page.tags, ["v2"]);

    // A referrer (a signature stand-in) found through the referrers API.
    let mut sig_manifest = oci_client::manifest::OciImageManifest::build(
        &[ImageLayer::new(b"sig".to_vec(), "application/vnd.example.sig".into(), None)],
        &Config::new(b"{}".to_vec(), "application/vnd.oci.empty.v1+json".into(), None),
        None,
    );
    sig_manifest.artifact_type = Some("application/vnd.example.sig".into());
    sig_manifest.subject = Some(oci_client::manifest::OciDescriptor {
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        digest: digest.clone(),
        size: c.pull_manifest_raw(&image, &auth, &["application/vnd.oci.image.manifest.v1+json"]).await.unwrap().0.len() as i64,
        ..Default::default()
    });
    let sig_ref: Reference = format!("{}/team/app:sig", s.addr).parse().unwrap();
    c.push(
        &sig_ref,
        &[ImageLayer::new(b"sig".to_vec(), "application/vnd.example.sig".into(), None)],
        Config::new(b"{}".to_vec(), "application/vnd.oci.empty.v1+json".into(), None),
        &auth,
        Some(sig_manifest),
    )
    .await
    .expect("push referrer");
    let referrers = c.pull_referrers(&by_digest, None).await.expect("referrers");
    assert_eq!(referrers.manifests.len(), 1);
    assert_eq!(referrers.manifests[0].artifact_type.as_deref(), Some("application/vnd.example.sig"));

    s.shutdown().await;
}
