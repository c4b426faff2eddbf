/*
 * CBCT QA monitor: the screen behind the rating form (XDATScreen_edit_cbctqa_ratingData.vm).
 *
 * Opened from a CT session's Actions box ("Rate CBCT quality", the actionsBox add-on
 * xnat_imageSessionData/actionsBox/CbctQaRating.vm), with the session as search_element /
 * search_field / search_value and the project as "project", the way XNAT's own manual QC form
 * is opened. It fills what the radiologist must not type: a new rating gets a new accession
 * number (XnatExperimentdata.CreateNewID), the session, the project, the rater (the logged-in
 * user), today's date and the deterministic label {session_label}_rating_{rater}
 * (RatingLabels). That label is looked up first: if the radiologist has already rated the
 * session in this project, the form opens their rating to edit instead of a second one that
 * the per-project label uniqueness would refuse.
 *
 * Turbine finds this class by the screen's name in the org.nrg.xnat.turbine.modules packages,
 * ahead of the class xnat-data-builder generates from cbctqa.xsd
 * (org.nrg.xdat.turbine.modules.screens.XDATScreen_edit_cbctqa_ratingData), which it extends:
 * the generated class names the element and puts the rating ("om") into the template context.
 */
package org.nrg.xnat.turbine.modules.screens;

import java.util.Calendar;

import org.apache.commons.lang3.StringUtils;
import org.apache.turbine.util.RunData;
import org.cbctqa.xnat.plugin.RatingLabels;
import org.nrg.xdat.XDAT;
import org.nrg.xdat.om.CbctqaRatingdata;
import org.nrg.xdat.om.XnatExperimentdata;
import org.nrg.xdat.om.XnatImagesessiondata;
import org.nrg.xdat.turbine.utils.TurbineUtils;
import org.nrg.xft.ItemI;
import org.nrg.xft.XFTItem;
import org.nrg.xft.schema.Wrappers.GenericWrapper.GenericWrapperElement;
import org.nrg.xft.security.UserI;

public class XDATScreen_edit_cbctqa_ratingData
        extends org.nrg.xdat.turbine.modules.screens.XDATScreen_edit_cbctqa_ratingData {

    @Override
    public ItemI getEmptyItem(final RunData data) throws Exception {
        final UserI user = XDAT.getUserDetails();
        final CbctqaRatingdata rating = new CbctqaRatingdata(XFTItem.NewItem(getElementName(), user));
        final String searchElement = TurbineUtils.GetSearchElement(data);
        if (StringUtils.isEmpty(searchElement)
                || !GenericWrapperElement.GetElement(searchElement).instanceOf(XnatImagesessiondata.SCHEMA_ELEMENT_NAME)) {
            return rating.getItem();
        }
        final String sessionId = (String) TurbineUtils.GetPassedParameter("search_value", data);
        if (StringUtils.isEmpty(sessionId)) {
            return rating.getItem();
        }
        final XnatImagesessiondata session = new XnatImagesessiondata(TurbineUtils.GetItemBySearch(data));
        String project = (String) TurbineUtils.GetPassedParameter("project", data);
        if (StringUtils.isEmpty(project)) {
            project = session.getProject();
        }
        final String rater = user.getUsername();
        final String label = RatingLabels.ratingLabel(session.getIdentifier(project), rater);

        // One rating per rater and session: open the existing one rather than make a second.
        final XnatExperimentdata existing = XnatExperimentdata.GetExptByProjectIdentifier(project, label, user, false);
        if (existing != null && CbctqaRatingdata.SCHEMA_ELEMENT_NAME.equals(existing.getXSIType())) {
            return existing.getItem();
        }

        rating.setImagesessionId(session.getId());
        rating.setId(XnatExperimentdata.CreateNewID());
        rating.setProject(project);
        rating.setLabel(label);
        rating.setRater(rater);
        rating.setDate(Calendar.getInstance().getTime());
        return rating.getItem();
    }
}
