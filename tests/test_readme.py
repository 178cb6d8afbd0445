"""The README's config snippet builds SN in every part, nothing else."""
import os.path as osp
import re

from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

from ssn_norm.apis import count_norms
from ssn_norm.apis.checks import config_warnings, model_warnings

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_readme_snippet_sets_sn_in_every_part(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'data' / 'coco').mkdir(parents=True)
    with open(osp.join(REPO, 'README.md'), encoding='utf-8') as f:
        text = f.read()
    snippet = re.search(r'<!-- readme snippet[^\n]*\n```python\n(.*?)```',
                        text, re.S)
    assert snippet, 'README.md lost its marked config snippet'
    config = tmp_path / 'child.py'
    config.write_text(snippet.group(1))
    cfg = Config.fromfile(str(config))
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    assert {
        part: dict(c)
        for part, c in count_norms(model).items()
    } == {
        'backbone': {
            'SN': 53
        },
        'neck': {
            'SN': 8
        },
        'roi_head': {
            'SN': 8
        }
    }
    assert cfg.default_hooks.batch_stats.type == 'BatchStatsHook'
    assert cfg.default_hooks.checkpoint.type == 'CheckpointHook'
    assert config_warnings(cfg) == []
    assert model_warnings(cfg, model, training=True) == []
