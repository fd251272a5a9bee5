"""New vocabulary rows: the mean of their pieces (embeddings, untied decoder, bias), known text unchanged before
training, and a training context in which only the new rows move."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import vocabulary_assets
from transformers import BertForPreTraining

from bert_domain_ft.errors import UserError
from bert_domain_ft.model.pretraining import masked_lm_head
from bert_domain_ft.model.vocabulary import (
    EXTENSION_RECORD,
    NewRow,
    extend_model_weights,
    fresh_rows,
    only_rows_change,
    row_parameters,
)

SIZE = len(vocabulary_assets.vocabulary())
ROWS = [NewRow(2, (40, 41, 42)), NewRow(3, (50, 51)), NewRow(SIZE, (60, 61, 62, 63))]  # two slots, one grown row


@pytest.fixture(scope="module")
def untied(tmp_path_factory: pytest.TempPathFactory) -> tuple[BertForPreTraining, BertForPreTraining]:
    """(base, extended) BERTs whose decoder is a matrix of its own: two slots overwritten, one row grown."""
    root = tmp_path_factory.mktemp("untied")
    base = vocabulary_assets.write_model(root / "base", tie=False)
    extend_model_weights(str(base), root / "extended", ROWS, SIZE + 1)
    return BertForPreTraining.from_pretrained(str(base)).eval(), BertForPreTraining.from_pretrained(
        str(root / "extended")
    ).eval()


def test_every_row_holding_tensor_gets_the_mean_of_the_pieces_rows(untied) -> None:
    base, extended = untied
    assert not extended.config.tie_word_embeddings
    old_tensors, new_tensors = row_parameters(base), row_parameters(extended)
    assert len(new_tensors) == 3  # input embeddings, decoder weight, decoder bias
    assert extended.get_output_embeddings().weight is not extended.get_input_embeddings().weight
    for old, new in zip(old_tensors, new_tensors):
        for row in ROWS:
            assert torch.allclose(new[row.token_id], old[list(row.piece_ids)].mean(dim=0), atol=1e-6)
        kept = [i for i in range(old.shape[0]) if i not in (2, 3)]
        assert torch.equal(new[kept], old[kept])


def test_before_training_known_text_keeps_hidden_states_and_token_logits_the_loss_moving_by_the_new_rows_share(
    untied,
) -> None:
    base, extended = untied
    ids = torch.tensor([[7, 120, 130, 140, 150, 160, 8]])  # no new row among them
    with torch.no_grad():
        old_hidden = base.bert(input_ids=ids).last_hidden_state
        new_hidden = extended.bert(input_ids=ids).last_hidden_state
        old_logits = masked_lm_head(base).logits(old_hidden[0])
        new_logits = masked_lm_head(extended).logits(new_hidden[0])
    assert torch.equal(old_hidden, new_hidden)
    known = [i for i in range(old_logits.shape[1]) if i not in (2, 3)]  # every row but the overwritten slots
    assert torch.equal(new_logits[:, known], old_logits[:, known])
    targets = ids[0]
    old_loss = torch.nn.functional.cross_entropy(old_logits, targets)
    new_loss = torch.nn.functional.cross_entropy(new_logits, targets)
    # The loss differs only through the normaliser: what the new rows take (and the replaced slots gave back).
    share = (new_logits.logsumexp(dim=1) - old_logits.logsumexp(dim=1)).mean()
    assert torch.allclose(new_loss - old_loss, share, atol=1e-6)
    assert abs(float(share)) < 0.05


def test_only_the_new_rows_move_under_adamw_with_weight_decay(untied) -> None:
    _, extended = untied
    model = BertForPreTraining(extended.config)
    model.load_state_dict(extended.state_dict())
    rows = [row.token_id for row in ROWS]
    parameters = row_parameters(model)
    before = [parameter.detach().clone() for parameter in parameters]
    optimizer = torch.optim.AdamW(parameters, lr=1e-2, weight_decay=0.5)
    ids = torch.tensor([[7, 2, 3, rows[2], 120, 8]])
    with only_rows_change(parameters, rows, optimizer):
        for _ in range(3):
            output = model(input_ids=ids)
            output.prediction_logits[0].logsumexp(dim=-1).sum().backward()
            assert all(
                not parameter.grad[[i for i in range(parameter.shape[0]) if i not in rows]].any()
                for parameter in parameters
            )
            optimizer.step()
            optimizer.zero_grad()
    others = [i for i in range(before[0].shape[0]) if i not in rows]
    for old, new in zip(before, parameters):
        assert torch.equal(new[others], old[others]) and not torch.equal(new[rows], old[rows])
    model(input_ids=ids).prediction_logits.sum().backward()  # outside: the hooks are gone
    assert parameters[0].grad[others].any()


def test_fresh_rows_come_from_the_record_and_a_damaged_record_is_one_line(tmp_path: Path) -> None:
    assert fresh_rows(tmp_path) == () and fresh_rows(None) == ()
    (tmp_path / EXTENSION_RECORD).write_text(json.dumps({"format": 1, "added": [{"id": 9}, {"id": 4}]}))
    assert fresh_rows(tmp_path) == (4, 9)
    (tmp_path / EXTENSION_RECORD).write_text(json.dumps({"format": 1}))
    with pytest.raises(UserError, match="not a vocabulary-extension record"):
        fresh_rows(tmp_path)
