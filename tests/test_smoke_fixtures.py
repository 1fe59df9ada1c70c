"""The shared peers answer: moto serves S3, the MLflow server logs a run with an S3-backed artifact."""
import boto3
import mlflow


def test_moto_and_mlflow_server(tracking_uri, s3_bucket, tmp_path):
    boto3.client("s3").put_object(Bucket=s3_bucket, Key="k", Body=b"x")
    assert boto3.client("s3").get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"x"
    with mlflow.start_run() as run:
        mlflow.log_metric("m", 1.0)
        (tmp_path / "a.txt").write_text("hello")
        mlflow.log_artifact(str(tmp_path / "a.txt"))
    got = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="a.txt",
                                              dst_path=str(tmp_path / "dl"))
    assert open(got).read() == "hello"
    objs = boto3.client("s3").list_objects_v2(Bucket="mlflow-artifacts").get("Contents", [])
    assert any(o["Key"].endswith("a.txt") for o in objs)
