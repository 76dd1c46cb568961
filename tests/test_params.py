"""Parameter files: defaults merge, and one clear error naming the file and the key."""
import pytest

from nc.runs import params


def write(tmp_path, text, name="demo-vgg11.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD = "dataset: demo\nnetwork: vgg11\nepochs: 10\nlrs: [0.05]\nweight_decay: 5e-4\n"


def test_defaults_merge_and_yaml12_floats(tmp_path):
    write(tmp_path, "width: 0.25\nbatch_size: 64\n", "_defaults.yaml")
    p = params.load(write(tmp_path, GOOD + "batch_size: 32\n"))
    assert p["width"] == 0.25 and p["batch_size"] == 32 and p["weight_decay"] == 5e-4
    assert p["momentum"] == 0.9 and p["lr_milestones"] == [1 / 3, 2 / 3] and p["tpt_threshold"] == 0.999
    assert p["name"] == "demo-vgg11" and p["profile"] == tmp_path.name
    assert params.profile_files(tmp_path) == [tmp_path / "demo-vgg11.yaml"]


@pytest.mark.parametrize("extra,key", [
    ("bogus: 1\n", "bogus"),
    ("momentum: fast\n", "momentum"),
    ("momentum: 1.5\n", "momentum"),
    ("batch_size: 0\n", "batch_size"),
    ("lrs: []\n", "lrs"),
    ("device: gpu7\n", "device"),
    ("snapshot_epochs: [1, 99]\n", "snapshot_epochs"),
    ("width: true\n", "width"),
    ("seeds: [0, 0]\n", "seeds"),
    ("seeds: []\n", "seeds"),
    ("seeds: 3\n", "seeds"),
])
def test_bad_value_names_file_and_key(tmp_path, extra, key):
    text = GOOD.replace("lrs: [0.05]\n", "") + ("lrs: [0.05]\n" if not extra.startswith("lrs") else "") + extra
    path = write(tmp_path, text)
    with pytest.raises(params.ParameterError) as err:
        params.load(path)
    assert str(path) in str(err.value) and repr(key) in str(err.value)


def test_missing_key_and_unreadable_file(tmp_path):
    path = write(tmp_path, "dataset: demo\nnetwork: vgg11\nlrs: [0.1]\n")
    with pytest.raises(params.ParameterError, match=r"key 'epochs' is missing"):
        params.load(path)
    with pytest.raises(params.ParameterError, match="cannot read"):
        params.load(write(tmp_path, "dataset: [unclosed\n", "bad.yaml"))
    with pytest.raises(params.ParameterError, match="no such parameter file"):
        params.load(tmp_path / "absent.yaml")


def test_digest_ignores_where_not_what(tmp_path):
    p = params.load(write(tmp_path, GOOD))
    assert params.digest(p) == params.digest(dict(p, device="cuda", eval_batch_size=7, npz_dir="/x"))
    assert params.digest(p) != params.digest(dict(p, lrs=[0.1]))


def test_the_run_digest_leaves_out_only_the_list_of_seeds(tmp_path):
    p = params.load(write(tmp_path, GOOD))
    three = params.with_seeds(p, 3)
    assert params.digest(p) != params.digest(three) and params.run_digest(p) == params.run_digest(three)
    assert params.run_digest(p) != params.run_digest(dict(p, seed=1))  # the data seed is the run's
    assert params.run_seeds(p) == [0] and params.run_seeds(three) == [0, 1, 2] and params.with_seeds(p, None) is p


def test_select_cells_by_name_pattern_or_dataset(tmp_path):
    names = ["cifar10-vgg13", "cifar100-vgg13", "mnist-resnet18", "mnist-vgg11"]
    files = [tmp_path / f"{n}.yaml" for n in names]
    stems = lambda only: [f.stem for f in params.select(files, only)]
    assert stems(None) == stems([]) == names
    assert stems(["mnist"]) == ["mnist-resnet18", "mnist-vgg11"]  # a dataset, not a prefix: cifar10 != cifar100
    assert stems(["cifar10"]) == ["cifar10-vgg13"]
    assert stems(["*-vgg*", "mnist-resnet18"]) == ["cifar10-vgg13", "cifar100-vgg13", "mnist-resnet18", "mnist-vgg11"]
    with pytest.raises(ValueError, match="'svhn' matches no parameter file"):
        params.select(files, ["mnist", "svhn"])


@pytest.mark.parametrize("text,key,wants", [
    ("lrs: [0.0]\n", "lrs", "positive"),
    ("lrs: [-0.1]\n", "lrs", "positive"),
    ("epochs: 0\n", "epochs", "positive integer"),
    ("snapshot_epochs: [1, 5, 11]\n", "snapshot_epochs", "after 'epochs' = 10: [11]"),
    ("standardize: image\n", "standardize", "channel"),
    ("precision: fp16\n", "precision", "bf16"),
])
def test_bad_input_is_one_error_naming_the_file_key_and_value(tmp_path, text, key, wants):
    base = {k: v for k, v in (line.split(": ", 1) for line in GOOD.strip().splitlines())}
    override = dict(line.split(": ", 1) for line in text.strip().splitlines())
    path = write(tmp_path, "".join(f"{k}: {v}\n" for k, v in (base | override).items()))
    with pytest.raises(params.ParameterError) as err:
        params.load(path)
    message = str(err.value)
    assert str(path) in message and repr(key) in message and wants in message


@pytest.mark.parametrize("text,kind", [("- just\n- a list\n", "list"), ("a plain string\n", "str")])
def test_a_yaml_file_that_is_not_a_mapping_is_named(tmp_path, text, kind):
    path = write(tmp_path, text)
    with pytest.raises(params.ParameterError, match=rf"{path}: expected a mapping of key: value, got a {kind}"):
        params.load(path)
