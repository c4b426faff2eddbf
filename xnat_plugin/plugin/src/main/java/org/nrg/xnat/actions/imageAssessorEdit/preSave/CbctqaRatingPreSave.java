/*
 * CBCT QA monitor: checks a rating saved from the rating form, just before XNAT stores it.
 *
 * The rating form posts to XNAT's ModifyImageAssessorData action, as generated image-assessor
 * forms do. Before saving, that action runs every ModifyImageAssessorData.PreSaveAction in
 * this package (org.nrg.xnat.actions.imageAssessorEdit.preSave) on the assessor; this one acts
 * on cbctqa:ratingData only and
 *   - makes the rater the logged-in user, and refuses a form that names another rater;
 *   - sets the deterministic label {session_label}_rating_{rater} (RatingLabels);
 *   - looks that label up in the project: if the rater already has a rating of this session
 *     (say two forms were opened before either was saved), the save updates it (its accession
 *     number is taken over) instead of failing on XNAT's per-project label uniqueness.
 * Ratings written over REST (the project's gateway) do not pass through here; the gateway
 * applies the same label rule itself.
 */
package org.nrg.xnat.actions.imageAssessorEdit.preSave;

import java.util.Map;

import org.apache.commons.lang3.StringUtils;
import org.cbctqa.xnat.plugin.RatingLabels;
import org.nrg.xdat.om.CbctqaRatingdata;
import org.nrg.xdat.om.XnatExperimentdata;
import org.nrg.xdat.om.XnatImageassessordata;
import org.nrg.xdat.om.XnatImagesessiondata;
import org.nrg.xft.event.persist.PersistentWorkflowI;
import org.nrg.xft.security.UserI;
import org.nrg.xnat.turbine.modules.actions.ModifyImageAssessorData;

public class CbctqaRatingPreSave implements ModifyImageAssessorData.PreSaveAction {

    @Override
    public void execute(final UserI user, final XnatImageassessordata src, final Map<String, String> params,
                        final PersistentWorkflowI wrk) throws Exception {
        if (!(src instanceof CbctqaRatingdata)) {
            return;
        }
        final CbctqaRatingdata rating = (CbctqaRatingdata) src;
        final String login = user.getUsername();
        if (StringUtils.isBlank(rating.getRater())) {
            rating.setRater(login);
        } else if (!login.equals(rating.getRater())) {
            throw new IllegalArgumentException("This CBCT quality rating belongs to " + rating.getRater()
                    + "; only " + rating.getRater() + " can change it. Rate the session yourself from its Actions box.");
        }
        final XnatImagesessiondata session = rating.getImageSessionData();
        if (session == null || StringUtils.isBlank(rating.getProject())) {
            return; // XNAT's own validation reports the missing session or project
        }
        final String label = RatingLabels.ratingLabel(session.getIdentifier(rating.getProject()), login);
        rating.setLabel(label);
        final XnatExperimentdata existing =
                XnatExperimentdata.GetExptByProjectIdentifier(rating.getProject(), label, user, false);
        if (existing == null || existing.getId().equals(rating.getId())) {
            return;
        }
        if (!CbctqaRatingdata.SCHEMA_ELEMENT_NAME.equals(existing.getXSIType())) {
            throw new IllegalArgumentException("The label " + label + " is already used by " + existing.getId()
                    + " (" + existing.getXSIType() + ") in project " + rating.getProject()
                    + "; rename that experiment before rating this session.");
        }
        rating.setId(existing.getId());
    }
}
