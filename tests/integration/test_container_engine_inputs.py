"""container_engine's images entry point refuses an image reference or an archive path of the wrong format before it
looks anything up (its argument spec has already checked the types), each case a host of one run."""
from __future__ import annotations

import pytest
from llm_fixture import Cases, run_cases

BAD_INPUTS = [
    ({"container_engine_images": ["local/llm-base:bookworm", "bad ref!"]},
     'container_engine_images must be a list of image references (name, optional :tag, optional @sha256:digest); got '
     '["local/llm-base:bookworm", "bad ref!"].'),
    ({"container_engine_image_archives": ["images/base.tar"]},
     "container_engine_image_archives must be a list of absolute paths (without spaces) of docker save archives on the "
     'control node; got ["images/base.tar"].'),
    ({"container_engine_image_archives": ["/srv/my images/base.tar"]},
     'container_engine_image_archives must be a list of absolute paths (without spaces) of docker save archives'),
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Cases:
    work = tmp_path_factory.mktemp("container-engine-inputs")
    return run_cases(work, "container_engine_images.yml",
                     {f"case-{index}": extra for index, (extra, _) in enumerate(BAD_INPUTS)})


@pytest.mark.parametrize(("index", "message"), [(i, message) for i, (_, message) in enumerate(BAD_INPUTS)])
def test_a_bad_image_input_fails_naming_the_variable(runs: Cases, index: int, message: str) -> None:
    output = runs.hosts[f"case-{index}"]
    assert f"case-{index}" in runs.failed, output[-3000:]
    assert message in output, output[-3000:]
    assert "Images present on the host are looked up" not in output
