"""docs/model_zoo.md shows exactly the papers' rows of the metafiles, and the
renderer behind it (``--paper-tables``) keeps every number in its place."""
import os.path as osp
import warnings

import pytest
from _helpers import REPO, paper_entry, run_tool
from test_det_paper_rows import _walk

from ssn_norm.analysis import ResultWarning, load_model_entries
from ssn_norm.analysis.paper import (DOC_BEGIN, DOC_END, doc_section,
                                     render_paper_tables, replace_doc_section)

DOC = osp.join(REPO, 'docs', 'model_zoo.md')
REGENERATE = 'python tools/gather_results.py --paper-tables docs/model_zoo.md'
TPAMI = ('Switchable Normalization for Learning-to-Normalize Deep '
         'Representation')
RELEASED = ('switchablenorms/SwitchNorm_Detection (released '
            're-implementation, not the paper)')
URL = 'https://github.com/switchablenorms/SwitchNorm_Detection'


def _repository_entries():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        entries = load_model_entries([osp.join(REPO, 'model-index.yml')])
    return entries, [str(w.message) for w in caught]


def test_model_zoo_shows_exactly_the_metafiles_paper_rows():
    entries, _ = _repository_entries()  # problems: the next test
    with open(DOC, encoding='utf-8') as f:
        text = f.read()
    assert doc_section(text, DOC) == render_paper_tables(entries), (
        f'docs/model_zoo.md disagrees with the metafiles; run {REGENERATE}')


def test_repository_metafiles_follow_the_schema():
    """Nothing in them is ignored: an old metric name, a misspelt key or a
    missing file would silently drop a paper number from the tables."""
    entries, problems = _repository_entries()
    assert problems == []
    assert sum(entry.paper is not None for entry in entries.values()) > 0


METAFILE = 'Models:\n' + ''.join([
    paper_entry(
        'psp-sn',
        TPAMI,
        'VIII',
        'SN(8,2)',
        'mIoU: 75.9, mIoU(ms): 76.4',
        metadata='Training Data: Cityscapes'),
    paper_entry('i3d-sn', TPAMI, 'X', 'SN, batch 8',
                'Top 1 Accuracy: 73.5, Top 5 Accuracy: 91.2'),
    # Table IX: alphabetically before V..., numerically after.
    paper_entry('made-up-ix', TPAMI, 'IX', 'SN', 'Top 1 Accuracy: 99.0'),
    paper_entry(
        'deeplab-sn-city',
        TPAMI,
        'VII',
        'SN(8,2)',
        'mIoU: 71.6, mIoU(ms): 75.4',
        split='test',
        metadata='Training Data: Cityscapes'),
    paper_entry(
        'deeplab-sn-ade',
        TPAMI,
        'VII',
        'SN(8,2)',
        'mIoU: 38.7',
        metadata='Training Data: ADE20K'),
]) + f"""  - Name: faster-sn-2x
    Reference:
      Title: '{RELEASED}'
      URL: {URL}
      Setting: 'Faster R-CNN R-50-FPN SN(8,2) 2x'
      Metrics: {{box AP: 39.10}}
  - Name: faster-sn-c4
    Paper:
      Title: '{TPAMI}'
      Table: 'IV'
      Setting: 'SN/SN'
      Metrics: {{box AP: 33.0, AP50: 52.9, AP75: 35.7, APl: 48.7, APm: 37.2,
                 APs: 15.6}}
    Reference:
      Title: '{RELEASED}'
      URL: {URL}
      Setting: 'Faster R-CNN R-50-C4 SN(8,32) 2x'
      Metrics: {{box AP: 38.07}}
  - Name: ssn-mini
    Paper Reference: faster-sn-c4
"""

EXPECTED = f"""### Table IV

*{TPAMI}*

| Setting | box AP | AP50 | AP75 | APs | APm | APl | Config |
|---|---|---|---|---|---|---|---|
| SN/SN | 33.0 | 52.9 | 35.7 | 15.6 | 37.2 | 48.7 | `faster-sn-c4` |

### Table VII

*{TPAMI}*

| Data | Setting | mIoU | mIoU(ms) | Split | Config |
|---|---|---|---|---|---|
| Cityscapes | SN(8,2) | 71.6 | 75.4 | test | `deeplab-sn-city` |
| ADE20K | SN(8,2) | 38.7 | — | ours | `deeplab-sn-ade` |

Split: the paper evaluated that row on another split than the config does \
(`ours`: the same split).

### Table VIII

*{TPAMI}*

| Setting | mIoU | mIoU(ms) | Config |
|---|---|---|---|
| SN(8,2) | 75.9 | 76.4 | `psp-sn` |

### Table IX

*{TPAMI}*

| Setting | Top 1 Accuracy | Config |
|---|---|---|
| SN | 99.0 | `made-up-ix` |

### Table X

*{TPAMI}*

| Setting | Top 1 Accuracy | Top 5 Accuracy | Config |
|---|---|---|---|
| SN, batch 8 | 73.5 | 91.2 | `i3d-sn` |

### Other published numbers (not the paper)

Labelled references for configs whose setting another publication ran; \
never compared as the paper's numbers.

| Source | Setting | box AP | Config |
|---|---|---|---|
| [{RELEASED}]({URL}) | Faster R-CNN R-50-FPN SN(8,2) 2x | 39.1 | \
`faster-sn-2x` |
| [{RELEASED}]({URL}) | Faster R-CNN R-50-C4 SN(8,32) 2x | 38.07 | \
`faster-sn-c4` |
"""


@pytest.fixture
def metafile(tmp_path):
    path = tmp_path / 'metafile.yml'
    path.write_text(METAFILE)
    return str(path)


def test_render_every_number_split_and_reference_apart(metafile):
    """Tables in numeric order (IV < VII < VIII < IX < X), rows
    in metafile order, every metric of a row, the split in its own column,
    a dataset column where a table spans two, and the references only in
    their own table."""
    entries = load_model_entries([metafile])
    assert render_paper_tables(entries) == EXPECTED


def test_render_nothing_says_so():
    assert render_paper_tables({}) == 'No paper rows in the metafiles.\n'


def _doc(section='old\n'):
    return f'# Title\n\nintro\n{DOC_BEGIN}\n\n{section}\n{DOC_END}\n\nrest\n'


def test_replace_doc_section_keeps_the_rest_byte_for_byte():
    text = _doc()
    updated = replace_doc_section(text, 'new table\n', 'doc.md')
    assert updated == _doc('new table\n')
    assert doc_section(updated) == 'new table\n'
    assert replace_doc_section(updated, 'new table\n') == updated


@pytest.mark.parametrize('text, message', [
    ('no markers\n', r'doc\.md: expected one generated section, the line '
     r'<!-- paper-tables: .* followed by the line <!-- /paper-tables -->; '
     r'found 0 begin and 0 end marker\(s\)'),
    (_doc() + _doc(), r'found 2 begin and 2 end marker\(s\)'),
    (f'{DOC_END}\n{DOC_BEGIN}\n', r'doc\.md: the end marker '
     r'<!-- /paper-tables --> comes before the begin marker'),
])
def test_doc_without_one_section_is_an_error(text, message):
    with pytest.raises(ValueError, match=message):
        replace_doc_section(text, 'x\n', 'doc.md')
    with pytest.raises(ValueError, match=message):
        doc_section(text, 'doc.md')


def test_tool_writes_the_section_in_place(tmp_path, metafile, capsys):
    doc = tmp_path / 'zoo.md'
    doc.write_text(_doc())
    run_tool('gather_results', '--paper-tables', doc, '--metafiles', metafile)
    assert doc.read_text() == _doc(EXPECTED)
    assert 'updated the paper tables in' in capsys.readouterr().err
    run_tool('gather_results', '--paper-tables', doc, '--metafiles', metafile)
    assert 'is up to date' in capsys.readouterr().err
    run_tool('gather_results', '--paper-tables', '--metafiles', metafile)
    assert capsys.readouterr().out == EXPECTED


def test_tool_paper_tables_mode_rejects_run_arguments(tmp_path, metafile,
                                                      capsys):
    with pytest.raises(SystemExit):
        run_tool('gather_results', tmp_path, '--paper-tables', '--metafiles',
                 metafile)
    assert ('--paper-tables renders the metafiles only; it takes no '
            'WORK_DIRS and no --out') in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_tool('gather_results', '--metafiles', metafile)
    assert 'give WORK_DIRS to gather, or --paper-tables' in \
        capsys.readouterr().err
    doc = tmp_path / 'plain.md'
    doc.write_text('no section\n')
    assert run_tool('gather_results', '--paper-tables', doc, '--metafiles',
                    metafile) == 1
    assert 'expected one generated section' in capsys.readouterr().err
    assert doc.read_text() == 'no section\n'


def test_metafile_schema_problems_are_warned(tmp_path):
    path = tmp_path / 'metafile.yml'
    path.write_text("""
Models:
  - Name: a
    Paper: {Table: 'VII', Split: 3, Metrics: {mIoU: 70.0}}
  - Name: b
    Reference: {Title: x, URL: '', Metrics: {mIoU: 1.0}, Table: 'V'}
  - Name: c
    Reference: {Title: x, Metrics: {}}
""")
    with pytest.warns(ResultWarning) as record:
        entries = load_model_entries([str(path)])
    text = '\n'.join(str(w.message) for w in record)
    assert 'a: Paper.Split must be a non-empty text, got 3; ignored' in text
    assert entries['a'].paper.split is None
    assert "b: Reference.URL must be a non-empty text, got ''" in text
    assert ('b: Reference has unknown key(s) Table; known: Title, URL, '
            'Setting and Metrics; ignored') in text
    assert entries['b'].reference.metrics == {'mIoU': 1.0}
    assert entries['b'].paper is None
    assert ('c: Reference.Metrics must be a non-empty mapping such as '
            '{box AP: 41.0}, got {}; ignored') in text
    assert entries['c'].reference is None


# ------------------------------------------- READMEs, docs and metafiles agree
def _metafile_models():
    import glob

    import yaml
    for path in sorted(
            glob.glob(osp.join(REPO, 'configs', '*', 'metafile.yml'))):
        with open(path, encoding='utf-8') as f:
            for model in yaml.safe_load(f)['Models']:
                yield path, model


def _documents():
    import glob
    return sorted(
        glob.glob(osp.join(REPO, 'configs', '*', 'README.md')) +
        glob.glob(osp.join(REPO, 'docs', '*.md')))


def test_docs_name_only_configs_that_exist():
    """Every config path or linked config in the family READMEs and docs/
    exists (a renamed or deleted config leaves no stale reference)."""
    import re
    missing = []
    for doc in _documents():
        with open(doc, encoding='utf-8') as f:
            text = f.read()
        for path in re.findall(r'configs/[\w\-+./]+?\.py', text):
            if not osp.isfile(osp.join(REPO, path)):
                missing.append((osp.relpath(doc, REPO), path))
        for link in re.findall(r'\]\(([^)#\s]+)', text):
            if link.startswith(('http', 'mailto')):
                continue
            if not osp.exists(osp.normpath(osp.join(osp.dirname(doc), link))):
                missing.append((osp.relpath(doc, REPO), link))
    assert missing == []


def test_family_readmes_link_every_full_size_config():
    missing = []
    for path, model in _metafile_models():
        config = model['Config']
        if '/mini/' in config:
            continue
        readme = osp.join(osp.dirname(path), 'README.md')
        with open(readme, encoding='utf-8') as f:
            if f'({osp.basename(config)})' not in f.read():
                missing.append(config)
    assert missing == []


def test_metafiles_state_the_test_statistics_the_configs_use():
    """``Metadata: Test Statistics`` is there exactly for the configs whose
    SN layers have a BN branch and whose BatchStatsHook averages it (the
    SN paper's test setting)."""
    from mmengine.config import Config
    wrong = []
    for _, model in _metafile_models():
        cfg = Config.fromfile(osp.join(REPO, model['Config']))
        hook = cfg.get('default_hooks', {}).get('batch_stats')
        with_bn = any(
            node.get('type') in ('SN', 'SSN', 'SyncSN', 'SyncSSN')
            and 'BN' in node.get('normalizers', ('IN', 'LN', 'BN'))
            for node in _walk(cfg.model.to_dict()))
        averages = bool(hook) and with_bn and hook.get(
            'statistics',
            'batch_average') == 'batch_average' and hook.get('stages') == (
                'train_end', )
        stated = model['Metadata'].get('Test Statistics')
        if averages != (stated is not None) or (
                stated and not stated.startswith('batch average')):
            wrong.append((model['Name'], averages, stated))
    assert wrong == []
