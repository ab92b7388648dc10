use hearth_envd_proto::filesystem::*;
use hearth_envd_proto::process::*;

#[test]
fn json_shapes() {
    let e = EntryInfo {
        name: "a".into(),
        size: 3,
        r#type: FileType::FILE_TYPE_FILE.into(),
        ..Default::default()
    };
    println!("{}", serde_json::to_string(&e).unwrap());
    let r: ListDirRequest =
        serde_json::from_str(r#"{"path":"/x","depth":2,"unknown_field":1}"#).unwrap();
    println!("{:?}", r);
    let w: WatchDirRequest = serde_json::from_str(r#"{"path":"/x","include_entry":true}"#).unwrap();
    println!("{:?}", w);
    let s: SendSignalRequest =
        serde_json::from_str(r#"{"process":{"pid":3},"signal":"SIGNAL_SIGKILL"}"#).unwrap();
    println!("{:?}", s);
    let s: SendSignalRequest = serde_json::from_str(r#"{"process":{"pid":3},"signal":9}"#).unwrap();
    println!("{:?}", s);
    let ev = StartResponse {
        event: ProcessEvent {
            event: Some(process_event::Event::End(Box::new(
                process_event::EndEvent {
                    exit_code: 0,
                    exited: true,
                    status: "exit status 0".into(),
                    ..Default::default()
                },
            ))),
            ..Default::default()
        }
        .into(),
        ..Default::default()
    };
    println!("{}", serde_json::to_string(&ev).unwrap());
}
